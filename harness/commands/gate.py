"""`harness gate`: compare runs with a stored baseline; exit 0 pass, 1 regression or inconclusive, 2 unusable input."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_METRICS = ["output_tok_s"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "gate", help="fail CI when runs are slower than a baseline",
        description="Compare runs with a baseline using repeated samples (per-window values inside each run, "
                    "and repeated runs). Three verdicts per metric: regression (a one-sided Mann-Whitney U test is "
                    "significant AND the median moved more than --max-regression in the bad direction); pass (the "
                    "95%% bootstrap interval of the change rules out a regression of --max-regression); "
                    "inconclusive (the interval is too wide to tell: the output gives the smallest change this "
                    "sample detects and how many runs would detect the one asked). Prints a markdown verdict. "
                    "Exit 0: pass; 1: regression, or inconclusive unless --allow-inconclusive (then 0); "
                    "2: unusable input (different workload, model or GPU than the baseline, too few samples, an "
                    "invalid run). Windows: docs/loadgen.md.",
        epilog="Example: harness gate --baseline ci-cpu runs/ --metric ratio:output_tok_s:multilora/merged")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directories, or folders whose sub-folders are run directories")
    parser.add_argument("--baseline", required=True, help="baseline name (in --baseline-dir) or path to its .json")
    parser.add_argument("--baseline-dir", default="baselines", help="folder of baselines (default: %(default)s)")
    parser.add_argument("--metric", action="append", default=None, metavar="METRIC",
                        help="summary metric (output_tok_s, goodput, ttft_p99, ...) or "
                             "ratio:METRIC:ENGINE_A/ENGINE_B; repeat for several (default: output_tok_s)")
    parser.add_argument("--max-regression", default="5%",
                        help="smallest change of the median counted as a regression (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    parser.add_argument("--min-samples", type=int, default=3,
                        help="fewest samples per side (windows or runs) to judge at all (default: %(default)s)")
    parser.add_argument("--allow-inconclusive", action="store_true",
                        help="exit 0 when the sample is too small to tell (default: inconclusive exits 1)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the verdict to this file")
    parser.add_argument("--json", metavar="OUT.json", help="also write the verdict as JSON to this file")
    parser.set_defaults(func=run)


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def run(args: argparse.Namespace) -> int:
    from harness.baseline import check_comparable, load_baseline, snapshot_dirs
    from harness.gate import (GateInputError, evaluate, parse_fraction, parse_metric, render_markdown,
                              render_unusable, report_json)

    try:
        specs = [parse_metric(m) for m in (args.metric or DEFAULT_METRICS)]
        max_regression = parse_fraction(args.max_regression)
        if args.min_samples < 1:
            raise GateInputError(f"--min-samples {args.min_samples} must be at least 1")
        baseline = load_baseline(args.baseline, args.baseline_dir)
        current = snapshot_dirs(args.runs)
        check_comparable(baseline, current)
        report = evaluate(baseline, current, specs, max_regression=max_regression, alpha=args.alpha,
                          min_samples=args.min_samples, allow_inconclusive=args.allow_inconclusive)
    except GateInputError as exc:
        message = f"Unusable input, nothing was judged: {exc}"
        print(f"gate: {message}", file=sys.stderr)
        _write(args.markdown, render_unusable(message))
        _write(args.json, json.dumps({"verdict": "unusable", "exit_code": 2, "message": message}, indent=1) + "\n")
        return 2
    text = render_markdown(report)
    print(text, end="")
    _write(args.markdown, text)
    _write(args.json, json.dumps(report_json(report), indent=1) + "\n")
    return report.exit_code
