"""`harness run WORKLOAD [--engine NAME ...]`: run a workload against each engine and compare them in a table."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def register(subparsers) -> None:
    from harness.commands.common import add_workload_arguments
    from harness.errors import EXIT_CODES_HELP
    from harness.spec import PRECEDENCE, LoadgenSpec

    p = subparsers.add_parser("run", help="run a workload against engines and compare them",
                              description=f"{__doc__}\n\nPrecedence of values: {PRECEDENCE}. The run prints what "
                              "the cpu: section changed; each run's config.json holds the resolved spec.",
                              epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", help="workload YAML, e.g. workloads/bursty30.yaml")
    p.add_argument("--engine", action="append", default=None, metavar="NAME",
                   help="engine to run (repeatable): one of the workload's engines by name, multilora, merged, peft, "
                        'stub, or a JSON object such as \'{"name": "vllm", "kind": "external", "url": '
                        '"http://127.0.0.1:8000"}\'; default: the workload\'s engines')
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Locust worker processes, the same as --set loadgen.workers=N (default: the workload's, "
                        f"else {LoadgenSpec.workers})")
    add_workload_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_engine(text: str, flag: str = "--engine"):
    """--engine TEXT -> a name or, for text starting with '{', the JSON object (checked by parse_engine_entry)."""
    from harness.errors import UsageError

    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{flag} {text}: not valid JSON ({exc})") from None
    return text


def engines_to_run(args: argparse.Namespace, spec) -> list:
    """--engine values as engine entries (a name of one of the workload's entries picks that entry), or the
    workload's own; every one checked before anything runs."""
    from harness.engine_spec import parse_engine_entry

    if not args.engine:
        return list(spec.engines)
    by_label = {e.label: e for e in spec.engines}
    out = []
    for text in args.engine:
        value = parse_engine(text)
        out.append(by_label[value] if isinstance(value, str) and value in by_label else
                   parse_engine_entry(value, f"--engine {text}", engine_options=spec.engine_options,
                                      model=spec.resolution.external_model or spec.model))
    return out


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def comparison_table(runs) -> str:
    header = ["engine", "status", "valid", "req/s", "out tok/s", "goodput tok/s", "SLO %", "TTFT p50 ms",
              "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "E2E p99 s", "fairness", "errors"]
    rows = []
    for r in runs:
        m, c = r.summary.get("metrics", {}), r.summary.get("counts", {})
        errors = c.get("error", 0) + c.get("timeout", 0) + c.get("not_sent", 0)
        att = m.get("slo_attainment")
        rows.append([r.engine, r.status.get("status", "?"), "yes" if r.summary.get("valid") else "no",
                     _f(m.get("req_s")), _f(m.get("output_tok_s"), ".1f"), _f(m.get("goodput"), ".1f"),
                     "-" if att is None else f"{att * 100:.1f}", _ms(m.get("ttft_p50")), _ms(m.get("ttft_p99")),
                     _ms(m.get("tpot_p50")), _ms(m.get("tpot_p99")), _f(m.get("e2e_p99")),
                     _f(m.get("jain_fairness"), ".3f"), f"{errors}/{c.get('total', 0)}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(x).rjust(w) for x, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from harness.commands.common import load_spec
    from harness.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
    from harness.runner import run_engine
    from harness.store import list_runs, load_run

    t_start = time.monotonic()
    spec = load_spec(args)
    engines = engines_to_run(args, spec)
    for line in spec.resolution.describe():
        print(line)
    paths = []
    interrupted = False
    signal.signal(signal.SIGTERM, _terminate)  # a CI timeout stops the servers and keeps the records too
    # Ctrl-C stops the run even when this process was started with SIGINT ignored (a background job of a shell)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for engine in engines:
            paths.append(run_engine(spec, engine, args.runs_dir, progress=not args.no_progress))
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:  # the interrupted engine's directory is complete too: show it
        latest = [p for p in list_runs(args.runs_dir) if p not in paths]
        paths += sorted(latest, key=lambda p: p.stat().st_mtime)[-1:]
    runs = [load_run(p) for p in paths]
    if runs:
        print()
        print(f"{spec.name}: {spec.duration_s:g} s measured after {spec.warmup_s:g} s warm-up, "
              f"model {spec.model}, {spec.adapters.count} adapters")
        print(comparison_table(runs))
        for r in runs:
            reasons = r.summary.get("invalid_reasons") or []
            print(f"  {r.engine}: {r.path}" + (f"  (invalid: {'; '.join(reasons)})" if reasons else ""))
        print(f"total {time.monotonic() - t_start:.0f} s")
    if interrupted:
        print("interrupted: the records gathered so far are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    bad = [r for r in runs if r.status.get("status") != "completed" or not r.summary.get("valid")]
    for r in bad:
        reasons = r.summary.get("invalid_reasons") or [r.status.get("message") or r.status.get("status", "?")]
        print(f"harness run: {r.engine}: invalid: {'; '.join(reasons)}", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK
