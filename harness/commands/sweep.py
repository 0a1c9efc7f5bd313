"""`harness sweep`: a series of runs that finds the capacity curve λ*(N) per engine and writes capacity.json."""
from __future__ import annotations

import argparse
import json
import sys

from harness.errors import UsageError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,30,100") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, e.g. 2,4.5") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="find the largest rate (or adapter count) that meets the SLO, per engine",
        description="--over rate: for each adapter count N, search the largest total rate λ*(N) whose SLO "
                    "attainment is >= --target: start at the workload's rate, double (or halve) until one rate "
                    "passes and one fails, then bisect until the bracket is within --resolution (relative). "
                    "--over adapters: at each --rates value, the same search over the adapter count "
                    "(integers). Every run is kept in SWEEP/runs/; SWEEP/capacity.json holds, per engine, the "
                    "points (N, λ*, goodput at λ*, every run tried) and how each λ* is known: a bracket [lo, hi] "
                    "(lo met the SLO, hi did not), a lower bound (>= lo: nothing above it was seen to fail) or an "
                    "upper bound (< hi). A run whose load generator fell behind (p99 schedule lag over "
                    "loadgen.max_lag_p99_s) is re-run with twice the Locust workers, up to this machine's cores, "
                    "and if it still lags is recorded as load-generator-limited: never an SLO miss. Another run "
                    "that did not complete or was marked invalid counts as failing the SLO.",
        epilog="Example: harness sweep workloads/bursty30.yaml --over rate --adapters 1,30,100 --engines multilora "
               "merged --out sweeps/")
    parser.add_argument("workload", help="workload YAML file")
    parser.add_argument("--over", choices=["rate", "adapters"], default="rate",
                        help="search the rate per adapter count, or the adapter count per rate (default: rate)")
    parser.add_argument("--engines", nargs="+", default=None, metavar="ENGINE",
                        help="engine names, or JSON objects as in `harness run --engine` (e.g. an external server's URL); "
                             "default: the workload's engines")
    parser.add_argument("--adapters", type=_ints, default=(), metavar="N,N,...",
                        help="adapter counts for --over rate (default: the workload's count)")
    parser.add_argument("--rates", type=_floats, default=(), metavar="R,R,...",
                        help="total rates for --over adapters (default: the workload's rate)")
    parser.add_argument("--target", type=float, default=None,
                        help="SLO attainment a load must reach to pass (default: the workload's slo.attainment "
                             "if it has one, else 0.9)")
    parser.add_argument("--resolution", type=float, default=0.1,
                        help="stop when the bracket [pass, fail] is narrower than this fraction of the passing "
                             "rate (adapter counts: this many adapters, at least 1) (default: %(default)s)")
    parser.add_argument("--max-runs", type=int, default=12, help="most runs per search (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="measured window of each run in seconds (default: the workload's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="Locust worker processes per run, for rates one client process cannot send on time "
                             "(default: the workload's loadgen setting)")
    parser.add_argument("--out", default="sweeps", help="folder for sweep folders (default: %(default)s)")
    parser.set_defaults(func=run)


def parse_engines(items: list[str]) -> tuple:
    """Engine names (comma-separated allowed) or JSON objects, as `harness run --engine` takes them."""
    from harness.commands.run import parse_engine

    out: list = []
    for item in items:
        out += [parse_engine(item)] if item.strip().startswith("{") else [e for e in item.split(",") if e]
    return tuple(out)


# SweepConfig's fields as the flags the user typed
FLAGS = {"over": "--over", "adapters": "--adapters", "rates": "--rates", "target": "--target",
         "resolution": "--resolution", "max_probes": "--max-runs", "duration_s": "--duration", "workers": "--workers"}


def run(args: argparse.Namespace) -> int:
    from harness.sweep import CAPACITY_FILE, SweepConfig, curve_table, run_sweep

    engines = parse_engines(args.engines or [])
    try:
        cfg = SweepConfig(workload=args.workload, over=args.over, engines=engines, adapters=args.adapters,
                          rates=args.rates, target=args.target, resolution=args.resolution,
                          max_runs=args.max_runs, duration_s=args.duration, workers=args.workers,
                          out=args.out)
    except ValueError as exc:
        field, _, rest = str(exc).partition(":")
        raise UsageError(f"{FLAGS.get(field, field)}:{rest}") from None
    out = run_sweep(cfg)
    payload = json.loads((out / CAPACITY_FILE).read_text())
    print(curve_table(payload))
    for engine, message in payload.get("errors", {}).items():
        print(f"sweep: {engine} stopped early: {message}", file=sys.stderr)
    print(f"\nwrote {out / CAPACITY_FILE}; plan with: harness plan --sweep {out} --adapters 500 "
          "--rate-per-adapter 0.05")
    return 1 if payload.get("errors") else 0
