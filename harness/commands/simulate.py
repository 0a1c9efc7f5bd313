"""`harness simulate --run RUN`: a fleet of R replicas fitted from a measured run, under each routing policy."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.errors import EXIT_CODES_HELP, UsageError
from harness.simulate.policies import POLICIES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate", help="simulate R replicas fitted from a run: TTFT/TPOT, SLO attainment, smallest R, $/1M",
        description="Fit a replica's service model from a run directory (decode step vs batch and distinct "
                    "adapters, prefill, adapter load time, slots), then route a trace over R simulated replicas "
                    "with each policy. The trace is the run's own unless --workload is given.",
        epilog="Example: harness simulate --run runs/<dir> --workload workloads/powerlaw1000.yaml \\\n"
               "    --set adapters.count=10000 --set traffic.rate=500 --replicas 100 --find-replicas\n\n"
               + EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="DIR", help="run directory the replica model is fitted from")
    p.add_argument("--workload", default=None, metavar="W", help="workload YAML whose trace is simulated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a workload field")
    p.add_argument("--replicas", default="1", metavar="R[,R...]", help="replica counts (default: 1)")
    p.add_argument("--policy", default="all", help=f"one of {', '.join(POLICIES)}, a comma list, or all")
    p.add_argument("--adapter-slots", type=int, default=None, metavar="K",
                   help="adapters each replica keeps resident (its LRU; default: the run's gpu_slots)")
    p.add_argument("--find-replicas", action="store_true",
                   help="also search the smallest R meeting --attainment for each policy")
    p.add_argument("--attainment", type=float, default=0.99, help="SLO attainment target (default 0.99)")
    p.add_argument("--gpu-price", type=float, default=None, metavar="USD", help="$ per replica-hour for $/1M")
    p.add_argument("--validate", action="store_true",
                   help="replay the run on one replica and compare with what it measured")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give integers such as 1,2,4") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: every count must be >= 1")
    return values


def _policies(text: str) -> list[str]:
    names = list(POLICIES) if text == "all" else [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in POLICIES]
    if bad or not names:
        raise UsageError(f"--policy {text!r}: use all or one of {', '.join(POLICIES)}")
    return names


def load_inputs(args: argparse.Namespace):
    """(service model, trace, warmup_s, duration_s, slo) from --run and --workload/--set."""
    from harness.simulate.model import fit_run
    from harness.simulate.workload import measured_on_gpu, run_trace, workload_trace

    if not Path(args.run).is_dir():
        raise UsageError(f"--run {args.run!r} is not a folder; give a run directory made by `harness run`")
    model = fit_run(args.run)
    if args.adapter_slots is not None:
        if args.adapter_slots < 1:
            raise UsageError(f"--adapter-slots {args.adapter_slots} must be >= 1")
        model = model.with_(adapter_slots=args.adapter_slots)
    if args.workload:
        return (model, *workload_trace(args.workload, args.set, measured_on_gpu(args.run)))
    if args.set:
        raise UsageError("--set needs --workload (the run's own trace is replayed as it was)")
    return (model, *run_trace(args.run))


def _row(policy: str, s: dict) -> str:
    m = s["metrics"]

    def ms(v):
        return "-" if v is None else f"{v * 1e3:.0f}"

    cost = s.get("usd_per_1m_tokens")
    loads = s["adapter_loads"]
    return (f"{policy:<18} {s['replicas']:>4} {m['req_s']:>8.2f} {m['output_tok_s']:>10.0f} {ms(m['ttft_p50']):>8} "
            f"{ms(m['ttft_p99']):>8} {ms(m['tpot_p50']):>8} {ms(m['tpot_p99']):>8} {m['slo_attainment']:>7.3f} "
            f"{sum(loads):>8} {max(loads):>6} {'-' if cost is None else f'{cost:.3f}':>8}")


HEADER = (f"{'policy':<18} {'R':>4} {'req/s':>8} {'tok/s':>10} {'TTFT50':>8} {'TTFT99':>8} {'TPOT50':>8} "
          f"{'TPOT99':>8} {'SLO':>7} {'loads':>8} {'max/R':>6} {'$/1Mtok':>8}")


def run(args: argparse.Namespace) -> int:
    from harness.simulate.fleet import simulate
    from harness.simulate.model import SCOPE
    from harness.simulate.search import replicas_needed
    from harness.simulate.summary import summarize_fleet
    from harness.simulate.validate import replay_run

    counts, policies = _ints(args.replicas, "--replicas"), _policies(args.policy)
    if not 0 < args.attainment <= 1:
        raise UsageError(f"--attainment {args.attainment} must be in (0, 1]")
    model, trace, warmup, duration, slo = load_inputs(args)
    out: dict = {"model": model.to_dict(), "requests": len(trace), "slo": slo, "results": []}
    print(f"replica model from {args.run}: {model.describe()}")
    print(f"trace: {len(trace)} requests, {trace['adapter'].nunique()} adapters; SLO {slo}; times in ms")
    print(f"{SCOPE}\n")
    print(HEADER)
    for r in counts:
        for policy in policies:
            s = summarize_fleet(trace, simulate(trace, model, r, policy), warmup_s=warmup, duration_s=duration,
                                slo=slo, usd_per_replica_hour=args.gpu_price)
            out["results"].append({"policy": policy, **s})
            print(_row(policy, s))
    if args.find_replicas:
        found = replicas_needed(trace, model, policies, warmup_s=warmup, duration_s=duration, slo=slo,
                                target=args.attainment, usd_per_replica_hour=args.gpu_price)
        out["smallest_replicas"] = found
        print(f"\nsmallest R with SLO attainment >= {args.attainment} (simulated):")
        for policy, f in found.items():
            print(f"  {policy:<18} {'not within 4096' if f['replicas'] is None else f['replicas']}")
    if args.validate:
        v = replay_run(args.run, model)
        out["validation"] = v
        print(f"\nreplaying {args.run} on one replica (simulated vs measured):")
        for key, row in v["compare"].items():
            err = "-" if row["error"] is None else f"{row['error'] * 100:+.1f}%"
            print(f"  {key:<16} measured {row['measured']!s:<22.10} simulated {row['simulated']!s:<22.10} {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
        print(f"\nwrote {args.json}")
    return 0
