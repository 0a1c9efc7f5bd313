"""Runs the reports package (`python -m reports ...`) in its own process: the harness never imports reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def run_reports(argv: list[str]) -> str:
    """`python -m reports ARGV` with this checkout first on the path; its stdout, or UsageError with the
    last line it printed to stderr (its own one-line error)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = subprocess.run([sys.executable, "-m", "reports", *argv], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
        raise UsageError(lines[-1] if lines else f"python -m reports exited with code {res.returncode}")
    return res.stdout
