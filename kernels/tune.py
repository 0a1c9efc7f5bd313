"""`python -m kernels.tune`: search each kernel's launch space on this GPU and write kernels/configs/<gpu>.json."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kernels.launch import (CONFIG_TYPES, FUSED_MAX_TOKENS, ROWS_AUTO_TOKENS, SIDE_STREAM_MAX_TOKENS, attention_key,
                            attention_space, config_path, expand_key, expand_space, fused_key, fused_space, shrink_key,
                            expand_rows_space, shrink_rows_space, shrink_space)

_WORKER_INPUTS: dict[str, object] = {}


def _case(name: str):
    from kernels.cases import ATTENTION_CASES, LORA_CASES

    return next(c for c in LORA_CASES + ATTENTION_CASES if c.name == name)


def _runner(op: str, inp, case, cfg):
    """A closure that runs `op` once on one input set with a given config."""
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink
    from kernels.paged_attention import paged_decode_attention

    if op == "shrink":
        return lambda: lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=cfg)
    if op == "expand":
        return lambda: lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y, config=cfg)
    if op == "fused":
        from kernels.bench import fused_op
        return fused_op(inp, cfg)
    if op == "shrink_rows":  # timed with the expand by rows that sums its planes: more planes cost the expand
        from kernels.bench import rows_pair_op
        return rows_pair_op(inp, cfg)
    if op == "expand_rows":
        from kernels.bench import expand_rows_op
        return expand_rows_op(inp, cfg)
    return lambda: paged_decode_attention(inp.q, inp.k_cache, inp.v_cache, inp.block_tables, inp.context_lens,
                                          inp.scale, config=cfg)


def _compile(job: tuple[str, str, dict]) -> str | None:
    """Worker: run one (op, case, config) once so Triton compiles it into its on-disk cache."""
    import torch

    from kernels.cases import attention_inputs, lora_inputs

    op, name, fields = job
    case = _case(name)
    if name not in _WORKER_INPUTS:
        _WORKER_INPUTS[name] = attention_inputs(case) if op == "attention" else lora_inputs(case)
    cfg = CONFIG_TYPES[op](**fields)
    try:
        _runner(op, _WORKER_INPUTS[name], case, cfg)()
        torch.cuda.synchronize()
    except Exception as exc:  # a config the compiler or the GPU refuses (shared memory, registers)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return stepped_down(op, cfg)


def stepped_down(op: str, cfg) -> str | None:
    """Why a config is not what ran: launch_fitting stepped it down (too much shared memory), else None.

    Its timings would belong to the smaller config, so the tuner refuses it and times that one instead
    where the space has it.
    """
    from kernels.launch import _FITTED

    ran = {fit for (o, _, asked), fit in _FITTED.items() if o == op and asked == cfg and fit != cfg}
    return f"launches only stepped down to {sorted(map(str, ran))[0]}" if ran else None


def _keys(case) -> dict[str, str]:
    """The config keys of a LoRA case per op (bf16, as the cases run)."""
    r_max = case.r_max or case.rank
    shrink = shrink_key(case.tokens, case.hidden, case.slices, r_max, "torch.bfloat16")
    expand = expand_key(case.tokens, case.n_total, case.slices, r_max, "torch.bfloat16")
    return {"shrink": shrink, "shrink_rows": shrink, "expand": expand, "expand_rows": expand,
            "fused": fused_key(case.tokens, case.hidden, case.n_total, case.slices, r_max, "torch.bfloat16")}


OPS = ("fused", "shrink", "shrink_rows", "expand", "expand_rows", "attention")


def _spaces(case, ops=OPS) -> list[tuple[str, str, object]]:
    """(op, key, config) to time for a case, of the ops named."""
    return [job for job in _all_spaces(case) if job[0] in ops]


def _all_spaces(case) -> list[tuple[str, str, object]]:
    from kernels.cases import LoRACase

    if isinstance(case, LoRACase):
        r_max = case.r_max or case.rank
        keys = _keys(case)
        fused = fused_space(case.tokens, r_max) if case.tokens <= FUSED_MAX_TOKENS else []  # decode sizes
        return ([("fused", keys["fused"], c) for c in fused]  # first: the path decode takes, tuned within budget
                + [("shrink", keys["shrink"], c) for c in shrink_space(case.tokens, r_max, case.slices)]
                + [("shrink_rows", keys["shrink_rows"], c) for c in
                   (shrink_rows_space(case.tokens, r_max, case.slices) if case.tokens <= ROWS_AUTO_TOKENS else [])]
                + [("expand", keys["expand"], c) for c in expand_space(case.tokens, r_max)]
                + [("expand_rows", keys["expand_rows"], c) for c in
                   (expand_rows_space(r_max) if case.tokens <= ROWS_AUTO_TOKENS else [])])
    max_blocks = -(-case.context // case.block_size)
    key = attention_key(case.batch, max_blocks, case.block_size, case.hq, case.hkv, case.head_dim, "torch.bfloat16")
    return [("attention", key, c) for c in attention_space(case.batch)]


def _close(a, b, tol: float) -> bool:
    return bool(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)) < tol)


def tune_case(case, failed: dict, times: dict, deadline: float, log, ops=OPS) -> None:
    """Time every compiled, correct config of this case on rotating input sets into times[(op, key)][cfg]."""
    from kernels.bench import attention_sets, lora_sets, time_sets
    from kernels.cases import LoRACase

    is_lora = isinstance(case, LoRACase)
    sets = lora_sets(case) if is_lora else attention_sets(case)
    first = sets[0]
    if is_lora:  # references from the default configs, which the tests check against float64
        rank = case.rank
        _runner("shrink", first, case, None)()
        buf_ref = first.buf.clone()
        y0 = first.y.clone()
        _runner("expand", first, case, None)()
        y_ref = first.y - y0
    else:
        out_ref = _runner("attention", first, case, None)()
    for op, key, cfg in _spaces(case, ops):
        if time.monotonic() > deadline:
            log(f"  time budget spent at {case.name} {op} {cfg}")
            break
        if (op, case.name, cfg) in failed:
            log(f"  failed to build, skipped: {op} {cfg}: {failed[(op, case.name, cfg)]}")
            continue
        if op == "shrink":
            first.buf.fill_(float("nan"))
            _runner(op, first, case, cfg)()
            ok = _close(first.buf[..., :rank], buf_ref[..., :rank], 1e-4)
        elif op in ("expand", "fused", "shrink_rows", "expand_rows"):
            first.y.copy_(y0)
            first.buf.copy_(buf_ref)
            _runner(op, first, case, cfg)()
            ok = _close(first.y - y0, y_ref, 2e-2)
        else:
            ok = _close(_runner(op, first, case, cfg)(), out_ref, 1e-2)
        if not ok:
            log(f"  wrong result, skipped: {op} {cfg}")
            continue
        us = time_sets([_runner(op, inp, case, cfg) for inp in sets], replays=15)
        log(f"  {op} {case.name} {us:.2f} us {cfg}")
        times.setdefault((op, key), {}).setdefault(cfg, {})[case.name] = us


def choose(times: dict, table: dict, log) -> None:
    """Per (op, key): the config with the least total time over every case that shares the key.

    One key serves every batch of that shape whatever its adapter mix (e.g. 64 tokens on 64 rank-16
    adapters in rank-64 slots, and 64 tokens on 8 rank-64 adapters), so no single case decides.
    """
    for (op, key), per_cfg in times.items():
        cases = set().union(*(set(v) for v in per_cfg.values()))
        full = {cfg: sum(v.values()) for cfg, v in per_cfg.items() if set(v) == cases}
        if not full:
            continue
        cfg = min(full, key=full.get)
        table.setdefault(op, {})[key] = dataclasses.asdict(cfg)
        log(f"{op} [{key}] over {sorted(cases)}: " + ", ".join(f"{n} {us:.1f} us" for n, us in per_cfg[cfg].items())
            + f" with {cfg}")


def choose_paths(times: dict, table: dict, cases, log) -> None:
    """Per fused key: "lora_path" {"fused": bool}, whether the chosen fused config beat the pair's time on the
    step's critical path, summed over the cases that share the key: the chosen shrink plus the chosen expand,
    or up to SIDE_STREAM_MAX_TOKENS tokens the expand alone, since the model runs that shrink on a side stream
    beside the base matmul (on the H200, fused kernels that beat shrink + expand there made the step slower:
    docs/performance.md, run 6). Keys not measured on both paths are left out ("auto" then takes the pair)."""
    from kernels.cases import LoRACase

    def chosen_us(op, key, name):
        cfg = table.get(op, {}).get(key)
        return None if cfg is None else times.get((op, key), {}).get(CONFIG_TYPES[op](**cfg), {}).get(name)
    per_key: dict[str, list[tuple[float, float]]] = {}
    for case in cases:
        if not isinstance(case, LoRACase):
            continue
        keys = _keys(case)
        got = [chosen_us(op, keys[op], case.name) for op in ("fused", "shrink", "expand")]
        if None not in got:
            shrink = 0.0 if case.tokens <= SIDE_STREAM_MAX_TOKENS else got[1]  # overlapped on the side stream
            per_key.setdefault(keys["fused"], []).append((got[0], shrink + got[2], case.tokens))
    for key, rows in per_key.items():
        fused, pair = sum(r[0] for r in rows), sum(r[1] for r in rows)
        table.setdefault("lora_path", {})[key] = {"fused": fused < pair}
        what = "expand (shrink on the side stream)" if all(r[2] <= SIDE_STREAM_MAX_TOKENS for r in rows) \
            else "shrink + expand"
        log(f"lora_path [{key}]: fused {fused:.1f} us vs {what} {pair:.1f} us -> {'fused' if fused < pair else 'pair'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.tune", description=__doc__)
    parser.add_argument("--out", type=Path, help="JSON path (default kernels/configs/<gpu>.json); merged into")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names to tune")
    parser.add_argument("--ops", default=",".join(OPS),
                        help="comma-separated ops to tune (others keep their entries in the file), e.g. "
                             "expand for the segment expand alone")
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop searching after this many seconds")
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1),
                        help="processes compiling configs in parallel before timing")
    args = parser.parse_args(argv)
    ops = tuple(o for o in args.ops.split(",") if o)
    if not ops or set(ops) - set(OPS):
        print(f"--ops={args.ops!r}: give some of {', '.join(OPS)}", file=sys.stderr)
        return 2
    import torch
    import triton

    from kernels.cases import ATTENTION_CASES, LORA_CASES

    if not torch.cuda.is_available():
        print("kernels.tune needs a CUDA GPU: configs are tuned on the GPU they are for", file=sys.stderr)
        return 2
    if args.budget_s <= 0 or args.jobs < 1:
        print(f"--budget-s={args.budget_s} and --jobs={args.jobs} must be > 0", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    out = args.out or config_path(name)
    table = json.loads(out.read_text()) if out.exists() else {}
    table["gpu"] = name
    table["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
    keep = [s for s in args.only.split(",") if s]
    cases = [c for c in LORA_CASES + ATTENTION_CASES if not keep or any(k in c.name for k in keep)]
    deadline = time.monotonic() + args.budget_s

    def log(msg):
        print(msg, flush=True)

    jobs = [(op, c.name, cfg) for c in cases for op, _, cfg in _spaces(c, ops)]
    t0 = time.monotonic()
    import multiprocessing as mp

    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        errors = list(pool.map(_compile, [(op, n, dataclasses.asdict(cfg)) for op, n, cfg in jobs]))
    failed = {job: err for job, err in zip(jobs, errors) if err}
    log(f"compiled {len(jobs)} (op, case, config) in {time.monotonic() - t0:.0f} s with {args.jobs} processes; "
        f"{len(failed)} refused")
    times: dict = {}
    for case in cases:
        tune_case(case, failed, times, deadline, log, ops)
    choose(times, table, log)
    choose_paths(times, table, cases, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
