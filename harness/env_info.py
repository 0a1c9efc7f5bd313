"""What a run ran on: versions, GPU and driver, git revision, host; saved as env.json."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.gpu import gpu_inventory

PACKAGES = ("torch", "triton", "transformers", "peft", "locust", "gevent", "geventhttpclient", "aiohttp", "numpy",
            "pandas", "nvidia-ml-py")
REPO = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(repo: Path = REPO) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def collect() -> dict[str, Any]:
    gpu = gpu_inventory()
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "git": git_revision(),
        "gpu": gpu,
        "gpu_name": gpu["devices"][0]["name"] if gpu["devices"] else None,
    }
