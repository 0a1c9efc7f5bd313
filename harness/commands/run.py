"""`harness run WORKLOAD [--engine NAME ...]`: run a workload against each engine and compare them in a table."""
from __future__ import annotations

import argparse
import json
import signal
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a workload against engines and compare them", description=__doc__)
    p.add_argument("workload", help="workload YAML, e.g. workloads/bursty30.yaml")
    p.add_argument("--engine", action="append", default=None, metavar="NAME",
                   help="engine to run (repeatable): multilora, merged, peft, stub, or a JSON object such as "
                        '\'{"name": "vllm", "kind": "external", "url": "http://127.0.0.1:8000"}\'; '
                        "default: the workload's engines")
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--workers", type=int, default=None, help="Locust worker processes (default: the workload's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a workload field, e.g. --set traffic.rate=4 --set duration_s=30 (YAML values)")
    p.add_argument("--machine", choices=["auto", "cpu", "cuda"], default="auto",
                   help="apply the workload's cpu: section (cpu), ignore it (cuda), or decide from this machine")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_engine(text: str):
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"error: --engine {text!r} is not valid JSON ({exc})")
    if text == "stub":
        return {"name": "stub", "kind": "stub"}
    return text


def parse_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {item!r} must be KEY=VALUE, e.g. traffic.rate=4")
        out[key.strip()] = yaml.safe_load(value)
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
    from harness.runner import machine_has_cuda, run_workload
    from harness.spec import WorkloadError, load_workload
    from harness.store import load_run

    t_start = time.monotonic()
    try:
        spec = load_workload(args.workload)
        overrides = parse_overrides(args.set)
        if overrides:
            spec = spec.with_overrides(overrides)
        cuda = machine_has_cuda() if args.machine == "auto" else args.machine == "cuda"
        if not cuda and spec.cpu is not None:
            print(f"no CUDA here: the workload's cpu: section applies (model {spec.for_machine(False).model!r} "
                  "on the CPU, short window, low rate)")
        elif not cuda:
            print("no CUDA here: engines run on the CPU")
        spec = spec.for_machine(cuda)
    except WorkloadError as exc:
        print(f"error: {args.workload}: {exc}")
        return 2
    engines = [parse_engine(e) for e in args.engine] if args.engine else None
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be >= 1")
        return 2
    paths = []
    interrupted = False
    signal.signal(signal.SIGTERM, _terminate)  # a CI timeout stops the servers and keeps the records too
    # Ctrl-C stops the run even when this process was started with SIGINT ignored (a background job of a shell)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for engine in engines or list(spec.engines):
            paths += run_workload(spec, [engine], args.runs_dir, progress=not args.no_progress, workers=args.workers)
    except KeyboardInterrupt:
        interrupted = True
    from harness.store import list_runs

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
        print("interrupted: the records gathered so far are kept")
        return 130
    return 0 if all(r.status.get("status") == "completed" for r in runs) else 1
