"""Served output tokens/s of a run beside what the profiled decode step allows at the run's mean batch size.

Usage: python scripts/served_vs_step.py RUN_DIR PROFILE_JSON [--adapters N] [--json OUT]

RUN_DIR is a `harness run` directory of the built-in engine (summary.json, server.csv with the server's
batch-size samples); PROFILE_JSON a `harness profile` result. The step time at the run's mean batch is
interpolated linearly between the profiled batch sizes, on the rows with N distinct adapters (N capped at
the batch; default: the run's adapter count). What the step allows = mean batch / step time: the decode
rate with no time outside the GPU step (no prefill, scheduling, sampling or streaming).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

TARGET = 0.85  # issue 15: served >= 85% of what the profiled step allows


def mean_batch(run_dir: Path, window_s: float) -> float:
    """Mean of the server's batch-size gauge over the measured window (samples at 0 <= t <= window_s)."""
    with open(run_dir / "server.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lora_fleet_batch_size") not in (None, "")]
    vals = [float(r["lora_fleet_batch_size"]) for r in rows if 0.0 <= float(r["t"]) <= window_s]
    if not vals:
        raise ValueError(f"{run_dir}/server.csv: no lora_fleet_batch_size sample inside the {window_s:g} s window")
    return sum(vals) / len(vals)


def step_ms_at(profile: dict, batch: float, adapters: int) -> float:
    """Profiled decode step (ms) at `batch`, with min(adapters, b) distinct adapters at each profiled b."""
    points = {}
    for r in profile.get("decode", []):
        if r["adapters"] == min(adapters, r["batch"]):
            points[r["batch"]] = r["step_ms"]
    xs = sorted(points)
    if len(xs) < 1 or not xs[0] <= batch <= xs[-1]:
        raise ValueError(f"profile: batch {batch:.1f} with {adapters} adapters is outside the profiled batches "
                         f"{xs} (profile with --batches around it and --adapters {adapters})")
    for lo, hi in zip(xs, xs[1:]):
        if lo <= batch <= hi:
            f = (batch - lo) / (hi - lo)
            return points[lo] + f * (points[hi] - points[lo])
    return points[xs[0]]


def compare(run_dir: Path, profile: dict, adapters: int | None = None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    if adapters is None:
        adapters = int(((config.get("workload") or config).get("adapters") or {}).get("count", 0))
    b = mean_batch(run_dir, float(summary["window_s"]))
    step = step_ms_at(profile, b, adapters)
    allowed = b / (step / 1e3)
    served = float(summary["metrics"]["output_tok_s"])
    return dict(run=str(run_dir), adapters=adapters, mean_batch=b, step_ms=step, allowed_tok_s=allowed,
                served_tok_s=served, ratio=served / allowed, target=TARGET, met=served / allowed >= TARGET)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/served_vs_step.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("profile", type=Path)
    p.add_argument("--adapters", type=int, default=None, help="distinct adapters (default: the run's count)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    try:
        out = compare(a.run_dir, json.loads(a.profile.read_text()), a.adapters)
    except (OSError, ValueError, KeyError) as exc:
        print(f"served_vs_step: error: {exc}", file=sys.stderr)
        return 2
    print("| run | adapters | mean batch | profiled step ms | step allows tok/s | served tok/s | served / allowed |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {a.run_dir.name} | {out['adapters']} | {out['mean_batch']:.1f} | {out['step_ms']:.2f} | "
          f"{out['allowed_tok_s']:,.0f} | {out['served_tok_s']:,.0f} | {out['ratio']:.0%} "
          f"({'meets' if out['met'] else 'misses'} >= {TARGET:.0%}) |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
