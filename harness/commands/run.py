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
    p.add_argument("--percentiles", type=_percentiles, default=(), metavar="Q,Q,...",
                   help="latency percentiles beside p50, p90, p99 and the mean and sd, e.g. 95,99.9")
    p.set_defaults(func=run)


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        qs = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, e.g. 95,99.9") from None
    bad = [q for q in qs if not 0 < q < 100]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]:g} must be between 0 and 100")
    return qs


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
    from harness import console

    print(console.header(spec))
    try:
        for engine in engines or list(spec.engines):
            paths += run_workload(spec, [engine], args.runs_dir, progress=not args.no_progress, workers=args.workers,
                                  percentiles=args.percentiles)
            done = load_run(paths[-1])  # this engine's row now, not after the last engine
            print(console.engine_block(done, console.percentile_labels([done]), with_head=True))
    except KeyboardInterrupt:
        interrupted = True
    from harness.store import list_runs

    if interrupted:  # the interrupted engine's directory is complete too: show it
        latest = [p for p in list_runs(args.runs_dir) if p not in paths]
        paths += sorted(latest, key=lambda p: p.stat().st_mtime)[-1:]
    runs = [load_run(p) for p in paths]
    if runs:
        print()
        print(console.header(spec, runs))
        print(console.comparison_table(runs))
        for r in runs:
            reasons = r.summary.get("invalid_reasons") or []
            print(f"  {r.engine}: {r.path}" + (f"  (invalid: {'; '.join(reasons)})" if reasons else ""))
        csv_path, json_path = console.write_results(runs, spec, args.runs_dir)
        print(f"results of this invocation: {csv_path} and {json_path}")
        print(f"total {time.monotonic() - t_start:.0f} s")
    if interrupted:
        print("interrupted: the records gathered so far are kept")
        return 130
    return 0 if all(r.status.get("status") == "completed" for r in runs) else 1
