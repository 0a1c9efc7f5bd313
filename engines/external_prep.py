"""Before an external server is launched: its Python, its model and adapter paths, its LoRA limits, its environment."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engines.external_presets import PRESETS

if TYPE_CHECKING:
    from engines.external import ExternalSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def adapter_rank(folder: str | Path) -> int:
    """The largest rank of a PEFT adapter folder, from adapter_config.json (r and rank_pattern)."""
    path = Path(folder) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        ranks = [int(cfg["r"])] + [int(r) for r in (cfg.get("rank_pattern") or {}).values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"external: {path}: cannot read the adapter's rank ({type(exc).__name__}: {exc}); "
                         "give PEFT adapter folders") from None
    return max(ranks)


def with_lora_limits(spec: ExternalSpec) -> ExternalSpec:
    """max_loras = the adapter count and max_lora_rank = the largest rank, where the spec leaves them unset;
    capped and rounded up to what the preset's server accepts (vLLM takes ranks 1, 8, 16, 32, ...)."""
    adapters = spec.adapter_paths()
    if not adapters:
        return spec
    preset = PRESETS.get(spec.preset) if spec.preset else None
    max_loras, rank = spec.max_loras, spec.max_lora_rank
    if max_loras is None:
        max_loras = len(adapters)
        if preset is not None and preset.max_loras_cap is not None:
            max_loras = min(max_loras, preset.max_loras_cap)
    if rank is None:
        rank = max(adapter_rank(p) for p in adapters.values())
        if preset is not None and preset.lora_ranks:
            fits = [r for r in preset.lora_ranks if r >= rank]
            if not fits:
                raise ValueError(f"external: the adapters' largest rank {rank} is above the most {spec.preset} "
                                 f"takes ({max(preset.lora_ranks)})")
            rank = fits[0]
    return dataclasses.replace(spec, max_loras=max_loras, max_lora_rank=rank)


def _has_module(python: str, module: str) -> bool:
    """Whether `module` imports in that interpreter (found, not imported: vLLM takes seconds to import)."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def server_python(spec: ExternalSpec) -> str:
    """The Python for {python}: the spec's; else this one when it has the preset's module; else the preset's venv
    under the project root when it exists and has it. FileNotFoundError with the install hint otherwise."""
    preset = PRESETS.get(spec.preset) if spec.preset else None
    if spec.python:
        if not Path(spec.python).is_file() and shutil.which(spec.python) is None:
            raise FileNotFoundError(f"external: python={spec.python!r} does not exist")
        candidates = [spec.python]
    else:
        candidates = [sys.executable]
        if preset is not None and preset.venv:
            candidates.append(str(PROJECT_ROOT / preset.venv / "bin" / "python"))
    if preset is None or preset.module is None:
        return candidates[0]
    for python in candidates:
        if (Path(python).is_file() or shutil.which(python)) and _has_module(python, preset.module):
            return python
    raise FileNotFoundError(f"external: the {spec.preset} preset needs the {preset.module!r} module, which "
                            f"{' and '.join(candidates)} lack; install it: {preset.install} (or set python: to the "
                            "interpreter of the environment that has it, or attach with url:)")


def check_model_path(spec: ExternalSpec) -> None:
    """Before a preset's launch: a local model folder must hold config.json; this project's preset names are
    not checkpoints other servers can load; every adapter folder must hold adapter_config.json. A command
    template of one's own gets the adapter check only."""
    from engines.model.config import PRESETS as MODEL_PRESETS

    model = spec.model
    if model is not None and spec.preset is not None and not (spec.preset == "self" and model in MODEL_PRESETS):
        path = Path(model).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"external: model={model!r} is a folder without config.json; give a "
                                        "Hugging Face checkpoint folder (`harness model make --base PRESET OUT` "
                                        "writes one)")
        elif path.exists():
            raise FileNotFoundError(f"external: model={model!r} is a file; give a checkpoint folder")
        elif model in MODEL_PRESETS:
            raise FileNotFoundError(f"external: model={model!r} is this project's preset name, which "
                                    f"{spec.preset} cannot load; write it as a checkpoint with "
                                    f"`harness model make --base {model} OUT` and give model: OUT")
        elif model.startswith((".", "/", "~")) or model.count("/") > 1 or spec.preset == "self":
            raise FileNotFoundError(f"external: model={model!r} does not exist (a local path); "
                                    "`harness model make --base PRESET OUT` writes a checkpoint folder")
    for name, folder in spec.adapter_paths().items():
        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"external: adapter {name!r}: {folder} has no adapter_config.json; give "
                                    "PEFT adapter folders")


def launch_env(spec: ExternalSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(the server's environment, what the preset added): ours, then the preset's on a machine without CUDA
    (where neither ours nor the spec sets it), then the spec's."""
    preset = PRESETS.get(spec.preset) if spec.preset else None
    added: dict[str, str] = {}
    if preset is not None and preset.cpu_env is not None and not _has_cuda():
        added = {k: v for k, v in preset.cpu_env().items() if k not in os.environ and k not in spec.env}
    return {**os.environ, **added, **spec.env}, added


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
