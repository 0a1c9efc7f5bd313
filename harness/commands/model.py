"""`harness model make --base PRESET OUT`: a random-weight Hugging Face checkpoint folder that peers can load."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.errors import UsageError

DTYPES = ("bfloat16", "float16", "float32")


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. head_dim=32")
    return key.strip(), value.strip()


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="write a base checkpoint (config, safetensors, tokenizer)",
                                   description="Base model checkpoints for the engines and for peers.")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    make = sub.add_parser(
        "make", help="write a random-weight Hugging Face checkpoint of a preset's shape",
        description="Write OUT/config.json, model.safetensors (random weights, as the engines draw them for the "
                    "preset and seed), tokenizer.json (byte-level: id i < 256 is byte i, as the server's byte "
                    "tokenizer), tokenizer_config.json and generation_config.json. transformers, vLLM and this "
                    "project's engines load the folder unmodified; use it as `model:` of a workload.",
        epilog="Example: harness model make --base tiny --set head_dim=32 ckpt/tiny32  (vLLM-CPU needs a head "
               "size of 32 or more)")
    make.add_argument("out", metavar="OUT", help="folder to write (created; existing weights in it are replaced)")
    make.add_argument("--base", required=True, help="model preset whose shape to use (e.g. tiny, llama3-8b)")
    make.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE",
                      help="change one shape field of the preset (dim, n_layers, n_heads, n_kv_heads, head_dim, "
                           "intermediate_size, vocab_size, max_seq_len); repeatable")
    make.add_argument("--seed", type=int, default=0, help="weight seed (default: 0, the engines' own)")
    make.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="stored dtype (default: bfloat16)")
    make.set_defaults(func=run_make)


SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "vocab_size",
                "max_seq_len")


def model_args(base: str, overrides: list[tuple[str, str]]):
    """The preset's ModelArgs with the --set fields changed; UsageError naming the flag."""
    from engines.model.config import PRESETS, ModelArgs

    if base not in PRESETS:
        raise UsageError(f"--base: {base!r} is not a preset; presets: {', '.join(sorted(PRESETS))}")
    fields = {**PRESETS[base]}
    for key, value in overrides:
        if key not in SHAPE_FIELDS:
            raise UsageError(f"--set {key}={value}: {key!r} is not a shape field; fields: {', '.join(SHAPE_FIELDS)}")
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"--set {key}={value}: {value!r} is not an integer") from None
        if number < 1:
            raise UsageError(f"--set {key}={value}: must be >= 1")
        fields[key] = number
    if any(k in ("dim", "n_heads") for k, _ in overrides) and not any(k == "head_dim" for k, _ in overrides):
        fields["head_dim"] = 0  # derived again from dim // n_heads
    name = base if not overrides else f"{base}-" + "-".join(f"{k}{v}" for k, v in overrides)
    try:
        return ModelArgs(name=name, **fields)
    except ValueError as exc:
        raise UsageError(f"--set: {exc}") from None


def run_make(args: argparse.Namespace) -> int:
    import torch

    from engines.model.export import export_checkpoint

    margs = model_args(args.base, args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"OUT: {out} exists and is not a folder")
    start = time.perf_counter()
    try:
        export_checkpoint(margs, out, seed=args.seed, dtype=getattr(torch, args.dtype))
    except ValueError as exc:
        raise UsageError(f"--base {args.base}: {exc}") from None
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{out}: {margs.name} ({margs.n_layers} layers, dim {margs.dim}, heads {margs.n_heads}/{margs.n_kv_heads} "
          f"of {margs.head_dim}, vocab {margs.vocab_size}), {args.dtype}, seed {args.seed}: "
          f"{size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    print(f"use it as `model: {out}` in a workload, or `harness adapters make --base {out} ...`")
    return 0
