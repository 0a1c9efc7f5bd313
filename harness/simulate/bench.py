"""Benchmark: one hour of traffic over 100 replicas and 10,000 adapters; prints a table and writes JSON.

The rate is 500 req/s: 10,000 adapters at 0.05 req/s each (the per-adapter rate of the README's planner
example), i.e. 5 req/s per replica, under a third of the 16.9 req/s one H100 served at full SLO attainment
in docs/results/h100/bursty30 (the run the replica model is fitted from).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from harness.simulate.fleet import simulate
from harness.simulate.model import fit_run
from harness.simulate.policies import POLICIES
from harness.simulate.summary import summarize_fleet
from harness.simulate.workload import workload_trace

RUN = "docs/results/h100/bursty30/20261122-115656-bursty30-multilora"
WORKLOAD = "workloads/powerlaw1000.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.simulate.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=RUN, help="run the replica model is fitted from (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--adapters", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=500.0, help="req/s of the whole fleet (default: %(default)s)")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of traffic (default: one hour)")
    p.add_argument("--policy", default=",".join(POLICIES), help="comma list (default: all)")
    p.add_argument("--out", default="docs/results/simulate/bench.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = fit_run(args.run)
    sets = [f"adapters.count={args.adapters}", f"traffic.rate={args.rate}", f"duration_s={args.duration}",
            "warmup_s=0"]
    trace, warmup, duration, slo = workload_trace(WORKLOAD, sets, gpu=True)
    trace_s = time.perf_counter() - t0
    load = os.getloadavg()[0]
    print(f"{len(trace):,} requests over {args.duration:.0f} s, {trace['adapter'].nunique():,} adapters, "
          f"{args.replicas} replicas fitted from {args.run}; trace built in {trace_s:.1f} s; {os.cpu_count()} "
          f"CPU(s), one process; load average {load:.1f} at the start\n(wall s: elapsed, slowed by other jobs on a "
          "shared machine; CPU s: this process's CPU time, what one idle core needs; sim req/s = requests / CPU s)")
    print(f"{'policy':<18} {'wall s':>7} {'CPU s':>7} {'sim req/s':>9} {'tok/s':>9} {'TTFT50 ms':>9} {'TTFT99 ms':>9} "
          f"{'TPOT50 ms':>9} {'SLO':>6} {'loads':>8} {'max/R':>6}")
    rows = []
    for policy in args.policy.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        result = simulate(trace, model, args.replicas, policy)
        sim_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        s = summarize_fleet(trace, result, warmup_s=warmup, duration_s=duration, slo=slo)
        m = s["metrics"]
        rows.append({"policy": policy, "simulate_s": sim_s, "simulate_cpu_s": cpu_s, **s})
        print(f"{policy:<18} {sim_s:>7.1f} {cpu_s:>7.1f} {len(trace) / cpu_s:>9.0f} {m['output_tok_s']:>9.0f} "
              f"{m['ttft_p50'] * 1e3:>9.0f} {m['ttft_p99'] * 1e3:>9.0f} {m['tpot_p50'] * 1e3:>9.1f} "
              f"{m['slo_attainment']:>6.3f} {s['adapter_loads_total']:>8} {max(s['adapter_loads']):>6}")
    out = {"load_average_start": load, "load_average_end": os.getloadavg()[0], "requests": len(trace),
           "adapters": args.adapters, "replicas": args.replicas, "rate": args.rate,
           "duration_s": args.duration, "trace_s": trace_s, "model": model.to_dict(), "slo": slo, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"load average {os.getloadavg()[0]:.1f} at the end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
