"""Replaying a measured single-replica run through the simulator: predicted against measured figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.simulate.fleet import simulate
import numpy as np

from harness.simulate.model import ONE_STEP, ServiceModel, fit_run
from harness.simulate.summary import summarize_fleet
from harness.schema import RUN_FILES
from harness.store import load_run
from harness.trace import read_trace

COMPARED = ("output_tok_s", "req_s", "ttft_p50", "ttft_p90", "tpot_p50", "slo_attainment")


def admitting_steps(first_tokens, tol: float) -> int:
    """Steps that prefilled something: first tokens closer than tol to the previous one came from the same step."""
    t = np.sort(np.asarray(first_tokens, dtype=np.float64))
    t = t[np.isfinite(t)]
    return int(len(t) and 1 + np.count_nonzero(np.diff(t) > tol))


def replay_run(run_dir: str | Path, model: ServiceModel | None = None, band: float = 0.0) -> dict[str, Any]:
    """Simulate the run's own trace on one replica (fitted from the run unless a model is given); with band > 0
    also its TTFT p50 with every step cost scaled by 1 - band and 1 + band (how sensitive that figure is)."""
    run = load_run(run_dir)
    model = model or fit_run(run_dir)
    wl = run.config.get("workload", {})
    trace = read_trace(Path(run.path) / RUN_FILES["trace"])

    def replay(m: ServiceModel) -> tuple[dict[str, Any], np.ndarray]:
        result = simulate(trace, m, 1, "round_robin")
        return summarize_fleet(trace, result, warmup_s=float(wl["warmup_s"]), duration_s=float(wl["duration_s"]),
                               slo=dict(wl.get("slo") or {}))["metrics"], result.first

    sim, first = replay(model)
    spread = [replay(model.scaled(1 + f))[0]["ttft_p50"] for f in (-band, band)] if band > 0 else None
    tol = ONE_STEP * model.step_s
    ok = run.records[run.records["status"] == "ok"]
    steps = {"measured": admitting_steps(ok["first_token"], tol), "simulated": admitting_steps(first, tol)}
    measured = run.summary.get("metrics", {})
    rows = {}
    for key in COMPARED:
        m, s = measured.get(key), sim.get(key)
        rows[key] = {"measured": m, "simulated": s,
                     "error": (s - m) / m if m not in (None, 0) and s is not None else None}
    return {"run": str(run_dir), "model": model.to_dict(), "valid": run.summary.get("valid"), "compare": rows,
            "ttft_p50_band": {"step_cost_change": band, "simulated": spread} if spread else None,
            "prefill_steps": steps}


def main(argv: list[str] | None = None) -> int:
    """python -m harness.simulate.validate RUN... [--fit RUN] [--out JSON]: the replay table, JSON beside it."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m harness.simulate.validate",
                                description="Replay measured single-replica runs through the simulator.")
    p.add_argument("runs", nargs="+", help="run directories to replay")
    p.add_argument("--fit", default=None, help="fit the replica model from this run for all (default: each its own)")
    p.add_argument("--band", type=float, default=0.03,
                   help="also replay with every step cost scaled by 1 -/+ this (default: %(default)s)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    model = fit_run(args.fit) if args.fit else None
    rows = [replay_run(run, model, args.band) for run in args.runs]
    print(f"fitted from: {args.fit or 'each run itself'}; error = simulated / measured - 1")
    print(f"{'run':<48} {'valid':>5} {'tok/s meas':>10} {'sim':>8} {'err':>7} {'TTFT50 meas ms':>14} {'sim':>7} "
          f"{'err':>7} {'prefill steps':>13} {f'TTFT50 at cost -/+{args.band:.0%}':>24}")
    for r in rows:
        tok, ttft = r["compare"]["output_tok_s"], r["compare"]["ttft_p50"]
        b = (r["ttft_p50_band"] or {}).get("simulated")
        print(f"{Path(r['run']).name:<48} {str(r['valid']):>5} {tok['measured']:>10.1f} {tok['simulated']:>8.1f} "
              f"{tok['error'] * 100:>+6.1f}% {ttft['measured'] * 1e3:>14.1f} {ttft['simulated'] * 1e3:>7.1f} "
              f"{ttft['error'] * 100:>+6.1f}% {r['prefill_steps']['measured']:>6}/{r['prefill_steps']['simulated']:<6}"
              + (f" {b[0] * 1e3:>11.1f} {b[1] * 1e3:>11.1f}" if b else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({"fit": args.fit, "rows": rows}, indent=1, default=float))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
