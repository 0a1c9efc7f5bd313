"""`harness adapters make|check`: write synthetic PEFT adapters for a base, or validate a folder of adapters."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.errors import UsageError

DTYPES = ("float16", "bfloat16", "float32")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 8,16") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list integers >= 1, e.g. 8,16")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser("adapters", help="make synthetic LoRA adapters, or check adapter folders",
                                   description="Synthetic PEFT LoRA adapters and validation against a base model.")
    sub = parser.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)

    make = sub.add_parser("make", help="write N synthetic adapters (PEFT format) for a base model",
                          description="Write N random LoRA adapters in PEFT format; existing identical ones are kept.")
    make.add_argument("out_dir", metavar="OUT_DIR", help="folder that receives <prefix>0000, <prefix>0001, ...")
    make.add_argument("--base", required=True, help="model preset name or checkpoint folder (only its shapes are used)")
    make.add_argument("--count", type=int, required=True, help="number of adapters")
    make.add_argument("--ranks", type=_int_list, default=[8], help="ranks, assigned round-robin (default: 8)")
    make.add_argument("--targets", type=_name_list, default=["q_proj", "k_proj", "v_proj", "o_proj"],
                      help="target modules (default: q_proj,k_proj,v_proj,o_proj)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    make.add_argument("--dtype", choices=DTYPES, default="float16", help="stored dtype (default: float16)")
    make.add_argument("--alpha", type=float, default=None, help="lora_alpha for every adapter (default: 2 * rank)")
    make.add_argument("--prefix", default="adapter-", help="folder-name prefix (default: adapter-)")
    make.add_argument("--jobs", type=int, default=1,
                      help="processes writing in parallel (default: 1; the files do not depend on it)")
    make.add_argument("--summary-json", default=None, metavar="PATH",
                      help="also write the summary (sizes, seconds, adapters/s) as JSON to PATH")
    make.set_defaults(func=run_make)

    check = sub.add_parser("check", help="validate a folder of adapters (or one adapter) against a base model",
                           description="Read every adapter folder in DIR, check it against the base and list it.")
    check.add_argument("dir", metavar="DIR", help="a folder of adapter folders, or one adapter folder")
    check.add_argument("--base", required=True, help="model preset name or checkpoint folder")
    check.add_argument("--max-rank", type=int, default=None, help="refuse adapters of a higher rank")
    check.set_defaults(func=run_check)


def _human(nbytes: int) -> str:
    """Decimal units, as disk sizes are quoted (13.6 MB)."""
    if nbytes < 1000:
        return f"{nbytes} B"
    value, units = nbytes / 1000, ["KB", "MB", "GB", "TB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.1f} {units[0]}"


def run_make(args: argparse.Namespace) -> int:
    import torch

    from engines.adapters.synth import adapter_nbytes, make_adapters, plan_adapters

    base = _base(args.base)
    dtype = getattr(torch, args.dtype)
    base_path = str(Path(args.base).resolve()) if Path(args.base).is_dir() else None  # a checkpoint: recorded
    request = dict(base=base, count=args.count, ranks=args.ranks, targets=args.targets, out_dir=args.out_dir,
                   seed=args.seed, prefix=args.prefix, dtype=dtype, alpha=args.alpha, base_path=base_path)
    start = time.perf_counter()
    try:
        plan = plan_adapters(**request)
        make_adapters(**request, progress=True, jobs=args.jobs)
    except ValueError as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    seconds = time.perf_counter() - start
    written = sum(not p.current for p in plan)
    rows = []
    for rank in sorted({p.rank for p in plan}):
        n = sum(p.rank == rank for p in plan)
        rows.append({"rank": rank, "count": n, "bytes_each": adapter_nbytes(base, rank, args.targets, dtype)})
    total = sum(r["count"] * r["bytes_each"] for r in rows)
    new_bytes = sum(adapter_nbytes(base, p.rank, args.targets, dtype) for p in plan if not p.current)
    print(f"{len(plan)} adapters for {base.name} ({base.n_layers} layers, dim {base.dim}) in {args.out_dir}: "
          f"{written} written, {len(plan) - written} reused, {seconds:.1f} s")
    print(f"targets: {','.join(args.targets)}   dtype: {args.dtype}   seed: {args.seed}")
    print(f"{'rank':>6} {'count':>7} {'bytes each':>14}")
    for r in rows:
        print(f"{r['rank']:>6} {r['count']:>7} {r['bytes_each']:>14,}  ({_human(r['bytes_each'])})")
    print(f"total: {_human(total)}" + (f"   write rate: {written / seconds:.1f} adapters/s, "
                                       f"{new_bytes / seconds / 1e6:.0f} MB/s" if written and seconds > 0 else ""))
    if args.summary_json:
        summary = {"base": base.name, "out_dir": str(args.out_dir), "count": len(plan), "written": written,
                   "jobs": args.jobs,
                   "reused": len(plan) - written, "targets": args.targets, "dtype": args.dtype, "seed": args.seed,
                   "ranks": rows, "total_bytes": total, "seconds": seconds,
                   "adapters_per_s": written / seconds if seconds > 0 else None,
                   "mb_per_s": new_bytes / seconds / 1e6 if seconds > 0 else None}
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"summary: {args.summary_json}")
    return 0


def _base(text: str):
    """--base: a preset or a checkpoint folder, refused in one line."""
    from engines.model.checkpoint import CheckpointError, resolve_args

    try:
        return resolve_args(text)
    except (CheckpointError, ValueError) as exc:
        raise UsageError(f"--base {text}: {' '.join(str(exc).split())}") from None


def _adapter_folders(root: Path) -> list[Path]:
    from engines.adapters.peft_format import CONFIG_NAME, adapter_folders

    return [root] if (root / CONFIG_NAME).is_file() else adapter_folders(root)


def run_check(args: argparse.Namespace) -> int:
    from engines.adapters.peft_format import read_adapter
    from engines.base import AdapterFileError

    base = _base(args.base)
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; give a folder of adapter folders or one adapter folder")
    folders = _adapter_folders(root)
    if not folders:
        raise UsageError(f"{root}: holds no adapter folders")
    print(f"{'adapter':<28} {'rank':>5} {'alpha':>7} {'scaling':>8} {'layers':>6} {'bytes':>12}  targets")
    bad = 0
    for folder in folders:
        try:
            a = read_adapter(folder, base, max_rank=args.max_rank)
        except AdapterFileError as exc:
            bad += 1
            print(f"{folder.name:<28} ERROR {exc}")
            continue
        print(f"{a.name:<28} {a.rank:>5} {a.alpha:>7g} {a.scaling:>8.4g} {len(a.layers()):>6} {a.nbytes():>12,}  "
              f"{','.join(a.targets)}")
    print(f"{len(folders) - bad} of {len(folders)} adapters valid for {base.name}")
    return 1 if bad else 0
