"""`harness baseline save|list|show`: store the samples of a set of runs as a named gate baseline."""
from __future__ import annotations

import argparse

from harness.errors import UsageError

DEFAULT_DIR = "baselines"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "baseline", help="save, list and show regression-gate baselines",
        description="Store per-engine, per-metric samples of runs (per-window and per-run values, config, "
                    "environment, workload, model, GPU) as baselines/NAME.json for `harness gate`.")
    sub = parser.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    save = sub.add_parser("save", help="save runs as a baseline")
    save.add_argument("runs", nargs="+", metavar="RUN",
                      help="run directories, or folders whose sub-folders are run directories")
    save.add_argument("--name", required=True, help="baseline name (file DIR/NAME.json)")
    save.add_argument("--dir", default=DEFAULT_DIR, help="folder of baselines (default: %(default)s)")
    save.add_argument("--force", action="store_true", help="replace an existing baseline of that name")
    listing = sub.add_parser("list", help="list the baselines in a folder")
    listing.add_argument("--dir", default=DEFAULT_DIR, help="folder of baselines (default: %(default)s)")
    show = sub.add_parser("show", help="show one baseline's identity and samples")
    show.add_argument("name", help="baseline name or path to its .json")
    show.add_argument("--dir", default=DEFAULT_DIR, help="folder of baselines (default: %(default)s)")
    parser.set_defaults(func=run)


def _median(values: list) -> str:
    import statistics

    clean = [v for v in values if v is not None]
    return f"{statistics.median(clean):.4g}" if clean else "n/a"


def _save(args) -> int:
    from harness.baseline import save_baseline, snapshot_dirs

    doc = snapshot_dirs(args.runs)
    path = save_baseline(doc, args.name, args.dir, force=args.force)
    runs = sum(len(e["runs"]) for e in doc["engines"].values())
    print(f"saved baseline {args.name!r} to {path}: {runs} run(s) of {', '.join(sorted(doc['engines']))}; "
          f"workload {doc['workload']}, model {doc['model']}, GPU {doc['gpu']}")
    return 0


def _list(args) -> int:
    from harness.baseline import list_baselines

    docs = list_baselines(args.dir)
    if not docs:
        print(f"no baselines in {args.dir}; make one with `harness baseline save RUN... --name NAME`")
        return 0
    print("| name | workload | model | GPU | engines (runs) | saved |")
    print("|---|---|---|---|---|---|")
    for doc in docs:
        engines = ", ".join(f"{e} ({len(v['runs'])})" for e, v in sorted(doc["engines"].items()))
        print(f"| {doc.get('name')} | {doc['workload']} | {doc['model']} | {doc['gpu']} | {engines} | "
              f"{doc.get('created_at', '?')} |")
    return 0


def _show(args) -> int:
    from harness.baseline import load_baseline
    from harness.gate import WORSE_WHEN

    doc = load_baseline(args.name, args.dir)
    print(f"baseline {doc.get('name')!r}: workload {doc['workload']}, model {doc['model']}, GPU {doc['gpu']}, "
          f"saved {doc.get('created_at', '?')}, window {doc.get('window_s')} s, trace sha256 "
          f"{str(doc.get('trace_sha256'))[:12]}")
    for engine, entry in sorted(doc["engines"].items()):
        print(f"\n{engine}: {len(entry['runs'])} run(s): " + ", ".join(r["dir"] for r in entry["runs"]))
        print("| metric | worse when | median of runs | runs | windows | median of windows |")
        print("|---|---|---|---|---|---|")
        for metric, sample in entry["metrics"].items():
            windows = [v for run in sample.get("per_window", []) for v in run]
            print(f"| {metric} | {WORSE_WHEN.get(metric, '-')} | {_median(sample['per_run'])} | "
                  f"{len(sample['per_run'])} | {len(windows) if 'per_window' in sample else '-'} | "
                  f"{_median(windows) if 'per_window' in sample else '-'} |")
    return 0


ACTIONS = {"save": _save, "list": _list, "show": _show}


def run(args: argparse.Namespace) -> int:
    from harness.gate import GateInputError

    try:
        return ACTIONS[args.baseline_command](args)
    except GateInputError as exc:
        raise UsageError(" ".join(str(exc).split())) from None
