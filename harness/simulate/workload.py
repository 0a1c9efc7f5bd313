"""The trace a simulation routes: a workload's (on the replica model's hardware, then --set) or a run's own."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.errors import UsageError
from harness.schema import RUN_FILES
from harness.spec import WorkloadError, load_workload, parse_set
from harness.store import load_run
from harness.trace import build_trace, read_trace


def measured_on_gpu(run_dir: str | Path) -> bool:
    """Whether the run was measured on a GPU (its summary names one)."""
    return bool(load_run(run_dir).summary.get("gpu"))


def workload_trace(path: str, sets: list[str], gpu: bool) -> tuple[pd.DataFrame, float, float, dict]:
    """(trace, warmup_s, duration_s, slo) of a workload as it runs on the replica model's hardware: its cpu:
    section applies when the model was fitted from a CPU run. --set overrides apply after it."""
    try:
        spec = load_workload(path, machine="cuda" if gpu else "cpu", overrides=parse_set(sets))
        trace = build_trace(spec)
    except (WorkloadError, OSError) as exc:
        raise UsageError(f"--workload {path}: {exc}") from None
    return trace, spec.warmup_s, spec.duration_s, spec.slo.limits()


def run_trace(run_dir: str | Path) -> tuple[pd.DataFrame, float, float, dict]:
    """The trace a run replayed, with its window and SLO."""
    run = load_run(run_dir)
    wl = run.config.get("workload", {})
    trace = read_trace(Path(run_dir) / RUN_FILES["trace"])
    return trace, float(wl["warmup_s"]), float(wl["duration_s"]), dict(wl.get("slo") or {})
