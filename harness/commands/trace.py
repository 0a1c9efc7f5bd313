"""`harness trace WORKLOAD [--out trace.csv] [--set KEY=VALUE]`: build the workload's trace, write it and print its
statistics (the same spec `harness run` would run: the file, then its cpu: section on a machine without CUDA, then
every --set)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from harness.commands.common import add_workload_arguments
    from harness.errors import EXIT_CODES_HELP

    p = subparsers.add_parser("trace", help="build a workload's trace and print its statistics",
                              description=__doc__, epilog=EXIT_CODES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", help="workload YAML, e.g. workloads/bursty30.yaml")
    p.add_argument("--out", default=None, help="write the trace CSV here")
    add_workload_arguments(p)
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
    from harness.commands.common import load_spec
    from harness.errors import UsageError
    from harness.trace import build_trace, trace_stats, write_trace

    if args.top < 0:
        raise UsageError(f"--top {args.top}: must be >= 0")
    spec = load_spec(args)
    for line in spec.resolution.describe():
        print(line)
    df = build_trace(spec)
    if args.out:
        try:
            print(f"wrote {write_trace(df, args.out)}")
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write it ({exc.strerror or exc})") from None
    print(describe(trace_stats(df, spec), args.top))
    return 0
