"""`harness plan`: adapters per GPU, GPUs needed and $/1M output tokens from a sweep's capacity curves."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import UsageError
from harness.planner import FORMULAS, GPU_PRICES, PLAN_TRACE_S

_PRICES = ", ".join(f"{k} ${v:.2f}" for k, v in GPU_PRICES.items())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="GPUs and $/1M tokens for N adapters from a capacity sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plan a shared-base fleet from the capacity curves λ*(N) of `harness sweep`.\n\nFormulas:\n"
                    + "\n".join(f"  {f}" for f in FORMULAS)
                    + f"\n\nDefault $/GPU-hour (edit with --gpu-price): {_PRICES}.",
        epilog="Example: harness plan --sweep sweeps/20261122-101500-bursty30-rate --adapters 500 "
               "--rate-per-adapter 0.05 --gpu h100 --gpu-price 2.5")
    parser.add_argument("--adapters", type=int, required=True, help="adapters to serve")
    parser.add_argument("--rate-per-adapter", type=float, required=True, metavar="REQ_S",
                        help="mean requests/s of each adapter")
    parser.add_argument("--gpu", default="h100", help=f"GPU type for the default price: {', '.join(GPU_PRICES)}")
    parser.add_argument("--gpu-price", type=float, default=None, metavar="USD",
                        help="$ per GPU-hour (default: the --gpu type's default)")
    parser.add_argument("--sweep", required=True, metavar="DIR", nargs="+",
                        help="sweep folder with capacity.json (made by harness sweep), or the file itself; several "
                             "sweeps of one workload are merged (per engine and N, a later one's point wins)")
    parser.add_argument("--workload", default=None, metavar="W",
                        help="workload YAML whose popularity and burstiness give the peaks (default: the sweep's)")
    parser.add_argument("--peak-window", type=float, default=10.0, metavar="S",
                        help="window over which peak rates are counted (default: %(default)s s)")
    parser.add_argument("--trace-duration", type=float, default=PLAN_TRACE_S, metavar="S",
                        help="seconds of planned traffic in which peaks are counted (default: %(default)s)")
    parser.add_argument("--dedicated-engine", default="merged",
                        help="engine whose λ*(1) sizes one dedicated deployment (default: %(default)s; "
                             "each engine's own when the sweep lacks it)")
    parser.add_argument("--simulate", default=None, metavar="RUN",
                        help="also simulate the planned trace over replicas fitted from run directory RUN "
                             "(harness simulate): GPUs and adapters per GPU per routing policy beside ceil()")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the plan as JSON")
    parser.add_argument("--png", default=None, metavar="OUT.png",
                        help="also draw the capacity curves with the demand line N x rate per adapter (kaleido)")
    parser.set_defaults(func=run)


def _load_capacity(path: str) -> dict:
    p = Path(path)
    p = p / "capacity.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"--sweep {path}: no capacity.json there; make one with `harness sweep WORKLOAD`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); rerun `harness sweep`") from exc


def merge_capacity(paths: list[str]) -> dict:
    """One capacity payload from several sweeps of the same workload: curves merged per engine, points
    keyed by N (a later sweep's point replaces an earlier one's), the first sweep's spec kept."""
    payloads = [_load_capacity(p) for p in paths]
    names = {pl.get("workload") for pl in payloads}
    if len(names) > 1:
        raise ValueError(f"--sweep: the sweeps are of different workloads {sorted(map(str, names))}; "
                         "plan from sweeps of one workload")
    curves: dict[str, dict[int, dict]] = {}
    for pl in payloads:
        for engine, points in pl.get("curves", {}).items():
            for point in points:
                curves.setdefault(engine, {})[point["n"]] = point
    merged = dict(payloads[0])
    merged["curves"] = {e: [pts[n] for n in sorted(pts)] for e, pts in curves.items()}
    return merged


def _fmt(v, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def render(plan: dict, gpu: str) -> str:
    """The plan as text: formulas, one row per engine, then shared vs dedicated at the peaks."""
    lines = ["Formulas:", *(f"  {f}" for f in plan["formulas"]), "",
             f"{plan['adapters']} adapters x {plan['rate_per_adapter']:g} req/s = "
             f"{plan['adapters'] * plan['rate_per_adapter']:.4g} req/s, {gpu} at ${plan['usd_per_gpu_hour']:.2f}"
             "/GPU-hour", ""]
    head = f"{'engine':<12} {'adapters/GPU':>12} {'GPUs':>6} {'$/hour':>9} {'goodput tok/s':>14} {'$/1M tok':>9}  note"
    lines += [head, "-" * len(head)]
    for p in plan["plans"]:
        lines.append(f"{p['engine']:<12} {p['adapters_per_gpu']:>12} {_fmt(p['gpus'], 'd'):>6} "
                     f"{_fmt(p['usd_per_hour'], '.2f'):>9} {p['goodput_tok_s']:>14.4g} "
                     f"{_fmt(p['usd_per_m_tokens'], '.3f'):>9}  {p['note']}")
    if plan["peaks"]:
        pk = plan["peaks"]
        lines += ["", f"Peaks over {pk['window_s']:g} s windows of the planned trace: aggregate "
                      f"{pk['aggregate_peak']:.4g} req/s, sum of per-adapter peaks {pk['sum_of_peaks']:.4g} req/s "
                      f"(mean {pk['mean_rate']:.4g})"]
        head = (f"{'engine':<12} {'shared GPUs':>11} {'dedicated (whole GPUs)':>22} {'dedicated (shares)':>18} "
                f"{'via':>10}")
        lines += [head, "-" * len(head)]
        for c in plan["comparison"]:
            if "note" in c and "shared_gpus" not in c:
                lines.append(f"{c['engine']:<12} {c['note']}")
                continue
            lines.append(f"{c['engine']:<12} {_fmt(c['shared_gpus'], 'd'):>11} {c['dedicated_gpus_whole']:>22} "
                         f"{c['dedicated_gpus_shares']:>18} {c['dedicated_engine']:>10}  {c.get('note', '')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from harness import planner

    try:
        price = planner.gpu_price(args.gpu, args.gpu_price)
        payload = merge_capacity(args.sweep)
        spec = args.workload or payload.get("spec")
        trace = None
        if spec:
            if args.trace_duration <= 0:
                raise ValueError(f"--trace-duration {args.trace_duration} must be > 0 seconds")
            trace = planner.planned_trace(spec, args.adapters, args.rate_per_adapter, args.trace_duration)
        plan = planner.plan_fleet(payload.get("curves", {}), args.adapters, args.rate_per_adapter, price,
                                  trace=trace, window_s=args.peak_window, dedicated_engine=args.dedicated_engine)
    except (ValueError, FileNotFoundError) as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    print(render(plan, args.gpu))
    if args.simulate:
        from harness.simulate.plan import render_simulated, simulated_plan

        if trace is None:
            raise UsageError("--simulate needs the workload (--workload W, or a sweep that records its spec)")
        plan["simulated"] = simulated_plan(args.simulate, trace, spec, args.adapters, payload.get("target", 0.99),
                                           price)
        print(render_simulated(plan["simulated"], plan))
    if not spec:
        print("\n(no workload: pass --workload W to compare a shared base with dedicated deployments)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(plan, indent=1))
    if args.png:
        from reports import figures, views
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        try:
            figures.save_png(views.capacity(payload, args.rate_per_adapter)[0], args.png)
        except RuntimeError as exc:  # kaleido missing: the plan is printed, the figure is not
            print(f"plan: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.png}")
    return 0
