"""`harness profile [--model llama3-8b]`: the built-in engine's decode/prefill/load profile against its floors, as a table and JSON."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from harness.errors import UsageError


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more integers >= 0")
    return vals


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(",") if text.strip() else ():  # "": no prefill section
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: give prefill batches as PROMPTSxTOKENS, e.g. 8x1024,4x2048")
        out.append((int(m[1]), int(m[2])))
    return tuple(out)


def _switch(text: str) -> bool | int | str:
    """--pdl, --cublaslt: on/off as true/false, auto, or a token count >= 1 (the engine extra of that name)."""
    t = text.strip().lower()
    if t in ("on", "off"):
        return t == "on"
    if t == "auto" or (t.isdigit() and int(t) >= 1):
        return t if t == "auto" else int(t)
    raise argparse.ArgumentTypeError(f"{text!r}: give on, off, auto or a token count >= 1")


def _modes(text: str) -> tuple[str, ...]:
    from kernels.launch import fused_mode
    modes = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    for m in modes:
        try:
            if m not in ("fold", "nofold", "rows", "segments", "srows", "sseg", "joint", "nojoint") \
                    and not (m.startswith("joint") and m[5:].isdigit()):
                fused_mode(m)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{m!r}: give on, off, auto, fold, nofold, rows, segments, srows, sseg, joint, joint<N>, nojoint or "
                "a token count, "
                "comma-separated") from None
    if not modes:
        raise argparse.ArgumentTypeError("give at least one of on, off, auto")
    return modes


def _side(args: argparse.Namespace) -> bool | int:
    """extra.lora_stream from --no-lora-stream / --lora-stream-tokens."""
    if args.lora_stream_tokens is None:
        return not args.no_lora_stream
    if args.no_lora_stream or args.lora_stream_tokens < 1:
        raise UsageError(f"--lora-stream-tokens {args.lora_stream_tokens}: must be >= 1, without --no-lora-stream")
    return args.lora_stream_tokens


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="profile the built-in engine against its byte and FLOP floors",
                              description=__doc__)
    p.add_argument("--model", default="llama3-8b", help="preset or checkpoint folder (default llama3-8b)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu) | bfloat16 | float16 | float32")
    p.add_argument("--rank", type=int, default=16, help="rank of the decode/prefill adapters")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="modules the adapters target")
    p.add_argument("--context", type=int, default=512, help="tokens of context per decoding sequence")
    p.add_argument("--batches", type=_ints, default=(1, 16, 64, 128, 256), help="decode batch sizes")
    p.add_argument("--adapters", type=_ints, default=(0, 1, 8, 30, 64, 128, 256),
                   help="distinct adapters per decode batch (those above the batch size are skipped)")
    p.add_argument("--mixed-prompts", type=_ints, default=(), metavar="P[,...]",
                   help="also time mixed steps: each decode batch plus P prompt tokens carried as rows (prompts of "
                        "128 tokens), as a server's graphed mixed step runs them (default: skip)")
    p.add_argument("--prefill", type=_pairs, default=((8, 1024), (4, 2048)), help="prefill batches PROMPTSxTOKENS")
    p.add_argument("--iters", type=int, default=30, help="timed repetitions per decode point (median)")
    p.add_argument("--rounds", type=int, default=3,
                   help="visit every decode point this many times in turn (default 3; 1: no spread is measured) "
                        "(each point: the median over rounds; "
                        "the LoRA tax: the median of each round's against its base, with its range)")
    p.add_argument("--loads", type=int, default=20, help="cold adapter loads timed while batch 64 decodes (0: skip)")
    p.add_argument("--many-adapters", type=int, default=5000, help="adapters registered for the many-adapter run (0: skip)")
    p.add_argument("--many-slots", type=int, default=128, help="device slots in the many-adapter run")
    p.add_argument("--many-rank", type=int, default=8, help="rank in the many-adapter run")
    p.add_argument("--many-time-limit", type=float, default=150.0, help="seconds the many-adapter run may serve")
    p.add_argument("--no-check", action="store_true", help="skip the tiny-model agreement check on the device")
    p.add_argument("--no-lora-stream", action="store_true",
                   help="run the LoRA shrink on the main stream (default: a side stream beside the base matmul)")
    p.add_argument("--lora-stream-tokens", type=int, default=None, metavar="N",
                   help="LoRA calls of up to N tokens run beside the base matmul on a side stream (default 64)")
    p.add_argument("--pdl", type=_switch, default=None, metavar="auto|on|off|N",
                   help="programmatic dependent launch of the step's own Triton kernels on Hopper GPUs (engine extra "
                        "pdl): on for every call, off, for calls of up to N tokens, or auto (default: the engine's, "
                        "calls of up to 64 tokens unless LORA_FLEET_PDL says otherwise)")
    p.add_argument("--cublaslt", type=_switch, default=None, metavar="auto|on|off|N",
                   help="the base matmuls' library (engine extra cublaslt): cuBLASLt for every forward pass (on), "
                        "never (off), for passes of up to N tokens, or auto (default: the engine's, passes of up to "
                        "96 tokens)")
    p.add_argument("--fused-lora", type=_modes, default=("auto",),
                   metavar="on|off|auto|fold|nofold|rows|segments|srows|sseg|joint|jointN|nojoint[,...]",
                   help="LoRA path: the fused shrink+expand kernel (on), the pair (off), by size (auto, default), or "
                        "the pair beside the base matmul with its output added by the next op (fold: engine extra "
                        "lora_fold, the default on CUDA for calls that take the side stream; nofold: the default "
                        "without it); the pair's expand goes by rows or by segments as the engine picks per step "
                        "(engine extra lora_expand_rows=auto), or always by rows (rows) or by segments (segments); "
                        "the shrink goes by rows where the expand does (engine extra lora_shrink_rows, default true), "
                        "always by segments with sseg, or by rows even where the default would not with srows; "
                        "joint: the q,k,v and o LoRA shrink inside the base matmul where the joint rule allows (engine "
                        "extra lora_joint=true; jointN: for steps of up to N tokens), nojoint: never; "
                        "several (e.g. auto,segments) measure each decode point with each, the first for the targets")
    p.add_argument("--out", default=None, help="JSON path (default docs/results/profile-<gpu>.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from engines.profile import ProfileConfig, print_summary, run_profile
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    cfg = ProfileConfig(model=args.model, dtype=args.dtype, device=args.device, rank=args.rank, targets=targets,
                        context=args.context, batches=args.batches, adapters=args.adapters, prefill=args.prefill,
                        iters=args.iters, rounds=args.rounds, loads=args.loads, many_adapters=args.many_adapters,
                        many_slots=args.many_slots, many_rank=args.many_rank,
                        many_time_limit_s=args.many_time_limit, lora_stream=_side(args),
                        fused_lora=args.fused_lora, mixed_prompts=args.mixed_prompts,
                        pdl=args.pdl, cublaslt=args.cublaslt)
    for flag, value in (("--rank", cfg.rank), ("--many-rank", cfg.many_rank), ("--iters", cfg.iters),
                        ("--rounds", cfg.rounds)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be >= 1")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    path = Path(args.out or f"docs/results/profile-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-').lower()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(out: dict) -> None:
        path.write_text(json.dumps(out, indent=1, default=str))
    with torch.inference_mode():
        out = run_profile(cfg, check=not args.no_check, save=save)
    print_summary(out)
    save(out)
    print(f"wrote {path}")
    # missed targets are findings, not failures; a disagreeing engine is a failure
    return 0 if out.get("gpu_check", {}).get("passed", True) else 1
