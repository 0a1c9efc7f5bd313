"""Replaying a measured single-replica run through the simulator: predicted against measured figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.simulate.fleet import simulate
from harness.simulate.model import ServiceModel, fit_run
from harness.simulate.summary import summarize_fleet
from harness.schema import RUN_FILES
from harness.store import load_run
from harness.trace import read_trace

COMPARED = ("output_tok_s", "req_s", "ttft_p50", "ttft_p90", "tpot_p50", "slo_attainment")


def replay_run(run_dir: str | Path, model: ServiceModel | None = None) -> dict[str, Any]:
    """Simulate the run's own trace on one replica (fitted from the run unless a model is given)."""
    run = load_run(run_dir)
    model = model or fit_run(run_dir)
    wl = run.config.get("workload", {})
    trace = read_trace(Path(run.path) / RUN_FILES["trace"])
    result = simulate(trace, model, 1, "round_robin")
    sim = summarize_fleet(trace, result, warmup_s=float(wl["warmup_s"]), duration_s=float(wl["duration_s"]),
                          slo=dict(wl.get("slo") or {}))["metrics"]
    measured = run.summary.get("metrics", {})
    rows = {}
    for key in COMPARED:
        m, s = measured.get(key), sim.get(key)
        rows[key] = {"measured": m, "simulated": s,
                     "error": (s - m) / m if m not in (None, 0) and s is not None else None}
    return {"run": str(run_dir), "model": model.to_dict(), "valid": run.summary.get("valid"), "compare": rows}
