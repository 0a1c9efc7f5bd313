"""`python -m kernels.tune`: search each kernel's launch space on this GPU and write kernels/configs/<gpu>.json."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from kernels.launch import (attention_key, attention_space, config_path, expand_key, expand_space, shrink_key,
                            shrink_space)


def _best(configs, run, check, deadline: float, log) -> tuple[object, float] | None:
    """Time every config that computes the right answer; the fastest, or None when none finished."""
    from kernels.bench import median_us

    best = None
    for cfg in configs:
        if time.monotonic() > deadline:
            log(f"  time budget spent after {cfg}")
            break
        try:
            run(cfg)
            if not check():
                log(f"  wrong result, skipped: {cfg}")
                continue
            us = median_us(lambda: run(cfg), rep_ms=30)
        except Exception as exc:  # a config the compiler or the GPU refuses (shared memory, registers)
            log(f"  failed, skipped: {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        if best is None or us < best[1]:
            best = (cfg, us)
    return best


def tune_lora(case, table: dict, deadline: float, log) -> None:
    import torch

    from kernels.cases import lora_inputs
    from kernels.launch import default_expand, default_shrink
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink

    inp = lora_inputs(case)
    r_max = case.r_max or case.rank
    buf_ref = torch.zeros_like(inp.buf)
    lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, buf_ref,
                config=default_shrink(case.tokens, case.hidden, case.slices, r_max))
    y0 = inp.y.clone()
    y_ref = y0.clone()
    lora_expand(buf_ref, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, y_ref,
                config=default_expand(case.tokens, case.n_total, case.slices, r_max))

    def close(a, b, tol):
        return bool(((a.float() - b.float()).norm() / b.float().norm()) < tol)

    def run_shrink(cfg):
        lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=cfg)

    def run_expand(cfg):
        inp.y.copy_(y0)
        lora_expand(buf_ref, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y, config=cfg)

    key = shrink_key(case.tokens, case.hidden, case.slices, r_max, inp.x.dtype)
    best = _best(shrink_space(case.tokens), run_shrink, lambda: close(inp.buf, buf_ref, 1e-4), deadline, log)
    if best:
        table.setdefault("shrink", {})[key] = dataclasses.asdict(best[0])
        log(f"shrink {case.name} [{key}]: {best[1]:.1f} us with {best[0]}")
    key = expand_key(case.tokens, case.n_total, case.slices, r_max, inp.y.dtype)
    best = _best(expand_space(case.tokens), run_expand, lambda: close(inp.y - y0, y_ref - y0, 2e-2), deadline, log)
    if best:
        table.setdefault("expand", {})[key] = dataclasses.asdict(best[0])
        log(f"expand {case.name} [{key}]: {best[1]:.1f} us with {best[0]}")


def tune_attention(case, table: dict, deadline: float, log) -> None:
    from kernels.cases import attention_inputs
    from kernels.launch import default_attention
    from kernels.paged_attention import paged_decode_attention

    inp = attention_inputs(case)
    args = (inp.q, inp.k_cache, inp.v_cache, inp.block_tables, inp.context_lens, inp.scale)
    max_blocks = inp.block_tables.shape[1]
    ref = paged_decode_attention(*args, config=default_attention(case.batch, max_blocks, case.block_size, case.hq,
                                                                 case.hkv, case.head_dim))
    holder = {}

    def run(cfg):
        holder["out"] = paged_decode_attention(*args, config=cfg)

    def check():
        return bool(((holder["out"].float() - ref.float()).norm() / ref.float().norm()) < 1e-2)

    key = attention_key(case.batch, max_blocks, case.block_size, case.hq, case.hkv, case.head_dim, inp.q.dtype)
    best = _best(attention_space(case.batch), run, check, deadline, log)
    if best:
        table.setdefault("attention", {})[key] = dataclasses.asdict(best[0])
        log(f"attention {case.name} [{key}]: {best[1]:.1f} us with {best[0]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.tune", description=__doc__)
    parser.add_argument("--out", type=Path, help="JSON path (default kernels/configs/<gpu>.json); merged into")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names to tune")
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop searching after this many seconds")
    args = parser.parse_args(argv)
    import torch
    import triton

    from kernels.cases import ATTENTION_CASES, LORA_CASES

    if not torch.cuda.is_available():
        print("kernels.tune needs a CUDA GPU: configs are tuned on the GPU they are for", file=sys.stderr)
        return 2
    if args.budget_s <= 0:
        print(f"--budget-s={args.budget_s} must be > 0", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    out = args.out or config_path(name)
    table = json.loads(out.read_text()) if out.exists() else {}
    table["gpu"] = name
    table["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
    keep = [s for s in args.only.split(",") if s]
    deadline = time.monotonic() + args.budget_s

    def log(msg):
        print(msg, flush=True)

    for case in LORA_CASES:
        if not keep or any(k in case.name for k in keep):
            tune_lora(case, table, deadline, log)
    for case in ATTENTION_CASES:
        if not keep or any(k in case.name for k in keep):
            tune_attention(case, table, deadline, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
