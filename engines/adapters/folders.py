"""Which sub-folders of an adapters folder are adapters: the one rule the workload spec and every engine use."""
from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"


def adapter_folders(root: str | Path) -> list[Path]:
    """Every visible sub-folder of `root`, sorted: each is an adapter served under its folder name.

    Files and hidden entries (".cache", ".git") are ignored; a visible sub-folder that is not an adapter is
    not skipped but refused (check_adapter_folders), so that a server never starts short of an adapter."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"adapters={str(root)!r} is not a folder of adapter folders")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def missing_file(folder: Path) -> str | None:
    """What an adapter folder lacks to be read (None: it has a config and weights)."""
    if not (folder / CONFIG_NAME).is_file():
        return f"no {CONFIG_NAME}"
    if not (folder / WEIGHTS_NAME).is_file() and not (folder / PICKLE_WEIGHTS_NAME).is_file():
        return f"no {WEIGHTS_NAME} (or {PICKLE_WEIGHTS_NAME})"
    return None


def check_adapter_folders(root: str | Path) -> list[Path]:
    """adapter_folders(root), each checked for its files; ValueError names the first sub-folder that is not an
    adapter and what it lacks (the files' contents are checked when an engine reads them)."""
    folders = adapter_folders(root)
    for folder in folders:
        why = missing_file(folder)
        if why is not None:
            raise ValueError(f"{folder} is not an adapter ({why}); every visible sub-folder of {root} must be a "
                             "PEFT adapter: remove it or rename it to start with '.'")
    return folders
