"""`harness plan`: adapters per GPU, GPUs needed and $/1M output tokens from a sweep's capacity curves."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import UsageError
from harness.planner import FORMULAS, GPU_PRICES, PLAN_TRACE_S
from harness.provenance import check_gpu, sweep_provenance

_PRICES = ", ".join(f"{k} ${v:.2f}" for k, v in GPU_PRICES.items())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="GPUs and $/1M tokens for N adapters from a capacity sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plan a shared-base fleet from the capacity curves λ*(N) of `harness sweep`. The plan first "
                    "says what the curves were measured on (machine, GPU, model, workload, read from the sweep's "
                    "run directories) and how each λ* is known (a bracket or a bound). It prices only the GPU "
                    "the curves were measured on: another GPU type, or a GPU from a sweep on a CPU, is refused "
                    "(exit 2) unless --allow-other-gpu, and then the plan is labelled an extrapolation.\n\n"
                    "Formulas:\n" + "\n".join(f"  {f}" for f in FORMULAS)
                    + f"\n\nDefault $/GPU-hour (edit with --gpu-price): {_PRICES}.",
        epilog="Example: harness plan --sweep sweeps/20261122-101500-bursty30-rate --adapters 500 "
               "--rate-per-adapter 0.05 --gpu-price 2.5")
    parser.add_argument("--adapters", type=int, required=True, help="adapters to serve")
    parser.add_argument("--rate-per-adapter", type=float, required=True, metavar="REQ_S",
                        help="mean requests/s of each adapter")
    parser.add_argument("--gpu", default=None,
                        help=f"GPU type to price: {', '.join(GPU_PRICES)} (default: the GPU the sweep ran on)")
    parser.add_argument("--allow-other-gpu", action="store_true",
                        help="price a GPU other than the one measured (or a GPU from a CPU sweep): an extrapolation")
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


def _capacity_file(path: str) -> Path:
    p = Path(path)
    p = p / "capacity.json" if p.is_dir() else p
    if not p.is_file():
        raise UsageError(f"--sweep {path}: no capacity.json there; make one with `harness sweep WORKLOAD`")
    return p


def _load_capacity(path: str) -> dict:
    p = _capacity_file(path)
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"--sweep {path}: {p} is not valid JSON ({exc.msg}); rerun `harness sweep`") from None


def merge_capacity(paths: list[str]) -> tuple[dict, dict[str, list[dict]]]:
    """One capacity payload from several sweeps of the same workload (curves merged per engine, points keyed by
    N, a later sweep's point replacing an earlier one's, the first sweep's spec kept) and, per engine, what
    its points were measured on."""
    payloads = [_load_capacity(p) for p in paths]
    names = {pl.get("workload") for pl in payloads}
    if len(names) > 1:
        raise UsageError(f"--sweep: the sweeps are of different workloads {sorted(map(str, names))}; "
                         "plan from sweeps of one workload")
    curves: dict[str, dict[int, dict]] = {}
    provenance: dict[str, list[dict]] = {}
    for path, pl in zip(paths, payloads):
        for engine, points in pl.get("curves", {}).items():
            for point in points:
                curves.setdefault(engine, {})[point["n"]] = point
        for engine, records in sweep_provenance(_capacity_file(path).parent, pl).items():
            provenance.setdefault(engine, [])
            provenance[engine] += [r for r in records if r not in provenance[engine]]
    merged = dict(payloads[0])
    merged["curves"] = {e: [pts[n] for n in sorted(pts)] for e, pts in curves.items()}
    return merged, provenance


def _check_args(args: argparse.Namespace) -> None:
    """Each flag checked as the user typed it."""
    if args.adapters < 1:
        raise UsageError(f"--adapters: {args.adapters} must be >= 1")
    for flag, value in (("--rate-per-adapter", args.rate_per_adapter), ("--peak-window", args.peak_window),
                        ("--trace-duration", args.trace_duration), ("--gpu-price", args.gpu_price)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag}: {value:g} must be > 0")
    if args.gpu is not None and args.gpu.lower() not in GPU_PRICES and args.gpu_price is None:
        raise UsageError(f"--gpu: unknown type {args.gpu!r}; use one of {', '.join(GPU_PRICES)} or give --gpu-price")


def _workload_mapping(path: str, machine: str | None) -> dict:
    from harness.spec import WorkloadError, load_workload

    try:
        return load_workload(path).for_machine(machine != "cpu").to_dict()
    except (WorkloadError, FileNotFoundError) as exc:
        raise UsageError(f"--workload {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from harness import planner
    from harness.plan_text import render

    _check_args(args)
    payload, provenance = merge_capacity(args.sweep)
    gpu, extrapolation = check_gpu(args.gpu, provenance, GPU_PRICES, args.allow_other_gpu)
    price = planner.gpu_price(gpu, args.gpu_price)
    spec = _workload_mapping(args.workload, payload.get("machine")) if args.workload else payload.get("spec")
    trace, why = None, ""
    if spec:
        try:
            trace = planner.planned_trace(spec, args.adapters, args.rate_per_adapter, args.trace_duration)
        except ValueError as exc:
            why = f"no shared-vs-dedicated comparison: the planned trace could not be built ({exc})"
    else:
        why = "no workload: pass --workload W to compare a shared base with dedicated deployments"
    try:
        plan = planner.plan_fleet(payload.get("curves", {}), args.adapters, args.rate_per_adapter, price,
                                  trace=trace, window_s=args.peak_window, dedicated_engine=args.dedicated_engine)
    except ValueError as exc:
        raise UsageError(f"--sweep {' '.join(args.sweep)}: {exc}") from None
    plan.update(gpu=gpu, extrapolation=extrapolation, measured_on=provenance)
    print(render(plan, gpu, provenance, payload.get("curves", {}), extrapolation))
    if args.simulate:
        from harness.simulate.plan import render_simulated, simulated_plan

        if trace is None:
            raise UsageError("--simulate needs the workload (--workload W, or a sweep that records its spec)")
        plan["simulated"] = simulated_plan(args.simulate, trace, spec, args.adapters, payload.get("target", 0.99),
                                           price)
        print(render_simulated(plan["simulated"], plan))
    if why:
        print(f"\n({why})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(plan, indent=1))
    if args.png:
        import tempfile

        from harness.report_proc import run_reports

        with tempfile.TemporaryDirectory() as tmp:  # the merged curves, drawn by the reports package
            merged = Path(tmp) / "capacity.json"
            merged.write_text(json.dumps(payload))
            run_reports(["capacity-png", str(merged), args.png, "--rate-per-adapter", str(args.rate_per_adapter)])
        print(f"wrote {args.png}")
    return 0
