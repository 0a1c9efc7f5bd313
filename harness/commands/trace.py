"""`harness trace WORKLOAD [--out trace.csv]`: build the workload's trace, write it and print its statistics."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("trace", help="build a workload's trace and print its statistics",
                              description=__doc__)
    p.add_argument("workload", help="workload YAML, e.g. workloads/bursty30.yaml")
    p.add_argument("--out", default=None, help="write the trace CSV here")
    p.add_argument("--machine", choices=["auto", "cpu", "cuda"], default="auto",
                   help="apply the workload's cpu: section (cpu), ignore it (cuda), or decide from this machine")
    p.add_argument("--top", type=int, default=10, help="adapters listed in the table")
    p.set_defaults(func=run)


def describe(stats: dict, top: int) -> str:
    lines = [f"requests {stats['requests']} over {stats['horizon_s']:.1f} s: rate {stats['rate']:.3f}/s, "
             f"cv of gaps {stats['cv'] if stats['cv'] is None else round(stats['cv'], 3)}, "
             f"{stats['adapters']} adapter(s)",
             f"aggregate peak-to-mean over {stats['window_s']:g} s windows: {stats['peak_to_mean']:.2f} "
             f"(peak {stats['peak_rate']:.0f}/s); sum of adapter peaks {stats['sum_of_adapter_peaks']:.0f}/s",
             f"mean prompt {stats['prompt_tokens_mean']:.1f} tokens, mean output {stats['output_tokens_mean']:.1f} tokens",
             "", f"{'adapter':<24} {'requests':>9} {'share':>7} {'rate/s':>8} {'peak/mean':>9}"]
    ranked = sorted(stats["per_adapter"].items(), key=lambda kv: -kv[1]["requests"])
    for name, a in ranked[:top]:
        ptm = "-" if a["peak_to_mean"] is None else f"{a['peak_to_mean']:.2f}"
        lines.append(f"{name or '(base)':<24} {a['requests']:>9} {a['share']:>7.3f} {a['rate']:>8.3f} {ptm:>9}")
    if len(ranked) > top:
        lines.append(f"... {len(ranked) - top} more")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from harness.spec import WorkloadError, load_workload
    from harness.trace import build_trace, trace_stats, write_trace

    try:
        spec = load_workload(args.workload)
        if args.machine == "auto":
            import torch

            spec = spec.for_machine(torch.cuda.is_available())
        else:
            spec = spec.for_machine(args.machine == "cuda")
        df = build_trace(spec)
    except WorkloadError as exc:
        print(f"error: {args.workload}: {exc}")
        return 2
    if args.out:
        print(f"wrote {write_trace(df, args.out)}")
    print(describe(trace_stats(df, spec), args.top))
    return 0
