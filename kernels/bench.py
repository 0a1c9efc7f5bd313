"""`python -m kernels.bench`: time the LoRA and attention kernels against their byte/FLOP floors; table + JSON."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from kernels import pdl
from kernels.launch import gpu_slug

ROOT = Path(__file__).resolve().parent.parent


def graph_of(fn):
    """Capture fn (already compiled by a warm-up call) into a CUDA graph; returns the graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def time_sets(fns, replays: int = 40) -> float:
    """Microseconds per call, median over replays of one CUDA graph that calls every fn once in turn.

    Each fn works on its own input set, and there are enough sets that a replay moves several times
    the L2 cache: weights come from memory, as in serving, while the per-step metadata shared by the
    sets stays cached, as it does across the layers of a step. Launch gaps inside the graph count.
    """
    import torch

    graph = graph_of(lambda: [fn() for fn in fns])
    for _ in range(3):
        graph.replay()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for st, en in zip(starts, ends):
        st.record()
        graph.replay()
        en.record()
    torch.cuda.synchronize()
    times = sorted(st.elapsed_time(en) for st, en in zip(starts, ends))
    return 1e3 * times[len(times) // 2] / len(fns)


def launch_floor_us() -> float:
    """Time per kernel of a graph of 32 one-element kernels: the fixed cost every launch in a graph pays."""
    import torch

    tiny = torch.zeros(1, device="cuda")
    return time_sets([lambda: tiny.add_(1.0)] * 32)


def l2_bytes() -> int:
    import torch

    return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))


def copy_bandwidth(device="cuda") -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy, timed by CUDA events around each copy (no
    host sync inside the span: a sync around each ~0.5 ms copy read the H200's rate 2-9% low, run 14)."""
    import torch
    import triton

    src = torch.randn(1 << 28, device=device)  # 1 GiB of fp32
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def matmul_flops(device="cuda", dtype=None) -> float:
    """FLOP per second of an 8192^3 matrix product in dtype (bfloat16 by default), timed as copy_bandwidth."""
    import torch
    import triton

    a = torch.randn(8192, 8192, device=device, dtype=dtype or torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=dtype or torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return 2 * 8192 ** 3 / (ms * 1e-3)


def lora_sets(case):
    """Input sets of a LoRA case sharing one LoRAMeta, enough of them to stream past the L2 cache."""
    from kernels.cases import input_sets, lora_inputs

    first = lora_inputs(case, seed=0)
    n = input_sets(case.bytes_moved(), l2_bytes())
    return [first] + [lora_inputs(case, seed=i, meta=first.meta) for i in range(1, n)]


def lora_ops(inp, config_s=None, config_e=None):
    """(shrink, expand, both) closures over one input set."""
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink

    def shrink():
        lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=config_s)

    def expand():
        lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y, config=config_e)

    def both():
        shrink()
        expand()
    return shrink, expand, both


# (block_m, block_n, late_rank) of the expand by rows: the rank masking the loads or only the products
ROWS_SPACE = [(m, n, late) for m in (2, 4, 8) for n in (32, 64, 128) for late in (False, True)]


def expand_rows_op(inp, config=None):
    """The expand by rows (kernels/lora_expand_rows.py) over one input set."""
    from kernels.lora_expand_rows import lora_expand_rows

    return lambda: lora_expand_rows(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y,
                                    config=config)


def bench_expand_rows(sets, r_max: int) -> tuple[float, float, str]:
    """(default config us, best us, best config) of the expand by rows over the input sets."""
    from kernels.launch import ExpandRowsConfig
    from kernels.lora_expand_rows import default_expand_rows

    base = default_expand_rows(r_max)
    t_default = time_sets([expand_rows_op(inp) for inp in sets])
    best = (t_default, base)
    for m, n, late in ROWS_SPACE:
        cfg = ExpandRowsConfig(block_m=m, block_n=n, block_r=base.block_r, num_warps=4, late_rank=late)
        t = time_sets([expand_rows_op(inp, cfg) for inp in sets])
        best = min(best, (t, cfg), key=lambda p: p[0])
    return t_default, best[0], str(best[1])


def update_diff(inp, want_fn, got_fn) -> float:
    """Relative difference of got_fn's y update from want_fn's, each from the same y (restored after)."""
    y0 = inp.y.clone()
    deltas = []
    for fn in (want_fn, got_fn):
        fn()
        deltas.append(inp.y.float() - y0.float())
        inp.y.copy_(y0)
    want, got = deltas
    return ((got - want).norm() / want.norm()).item()


def rows_error(inp) -> float:
    """Relative difference of the expand by rows' y update from the segment expand's, on the same rank vectors."""
    return update_diff(inp, lora_ops(inp)[1], expand_rows_op(inp))


def rows_pair_op(inp, config=None):
    """The shrink by rows (config: its ShrinkRowsConfig) and the expand by rows that sums its planes, one input set."""
    from kernels.lora_expand_rows import lora_expand_rows
    from kernels.lora_shrink_rows import lora_shrink_rows

    def pair():
        got = lora_shrink_rows(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf, config=config)
        lora_expand_rows(got, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y)
    return pair


LOOP_M_PROGRAMS = 32  # token-tile programs of the looping segment kernels the bench times (kernels.tune: 0 and 32)


def loop_pair_op(inp, m_programs: int = LOOP_M_PROGRAMS):
    """The segment pair with the configs it launches with here, but `m_programs` token-tile programs that loop over
    the step's real tiles (ShrinkConfig/ExpandConfig.m_programs) instead of one program per tile of the bound."""
    import dataclasses

    from kernels.lora_expand import expand_config
    from kernels.lora_shrink import shrink_config

    s = dataclasses.replace(shrink_config(inp.x, inp.lora_a, inp.meta), m_programs=m_programs)
    e = dataclasses.replace(expand_config(inp.buf, inp.lora_b, inp.y), m_programs=m_programs)
    return lora_ops(inp, s, e)[2]


def rows_pair_error(inp) -> float:
    """Relative difference of the rows pair's y update from the segment pair's."""
    return update_diff(inp, lora_ops(inp)[2], rows_pair_op(inp))


def fused_op(inp, config=None):
    """The fused shrink + expand over one input set."""
    from kernels.lora_fused import lora_fused

    return lambda: lora_fused(inp.x, inp.lora_a, inp.lora_b, inp.meta, inp.scales, inp.ranks, inp.slice_offsets,
                              inp.y, config=config)


def lora_error(inp, fused: bool = False) -> float:
    """Relative error of the kernels' y update (the pair's, or the fused kernel's) against the reference (float32)."""
    import torch

    from kernels import reference

    y0 = inp.y.clone()
    if fused:
        fused_op(inp)()
    else:
        shrink, expand, _ = lora_ops(inp)
        shrink()
        expand()
    buf_ref = torch.zeros_like(inp.buf)
    reference.lora_shrink_ref(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, buf_ref)
    y_ref = y0.float().clone()  # .float() of a float32 y would alias y0
    reference.lora_expand_ref(buf_ref, inp.lora_b.float(), inp.meta, inp.ranks, inp.slice_offsets, y_ref)
    return ((inp.y.float() - y_ref).norm() / (y_ref - y0.float()).norm()).item()


def bench_lora(case, bw: float, peak: float) -> dict:
    import torch

    from kernels.cases import torch_gather_bmm
    from kernels.launch import default_fused, fused_key, fused_wanted, lookup, sm_count
    from kernels.tiles import tile_bound

    sets = lora_sets(case)
    err = lora_error(sets[0])
    err_fused = lora_error(sets[0], fused=True)
    err_rows = rows_error(sets[0]) if case.tokens <= 256 else None  # before timing grows y past bf16's resolution
    err_rows_pair = rows_pair_error(sets[0]) if case.tokens <= 256 else None
    err_loop = update_diff(sets[0], lora_ops(sets[0])[2], loop_pair_op(sets[0]))
    ops = [lora_ops(inp) for inp in sets]
    t_shrink = time_sets([o[0] for o in ops])
    t_expand = time_sets([o[1] for o in ops])
    t = time_sets([o[2] for o in ops])
    t_fused = time_sets([fused_op(inp) for inp in sets])
    t_torch = time_sets([lambda inp=inp: torch_gather_bmm(inp, case.rank) for inp in sets])
    r_max = case.r_max or case.rank
    rows = bench_expand_rows(sets, r_max) if case.tokens <= 256 else (None, None, None)
    t_rows_pair = time_sets([rows_pair_op(inp) for inp in sets]) if case.tokens <= 256 else None
    t_loop = time_sets([loop_pair_op(inp) for inp in sets])
    floor = case.bytes_moved() / bw * 1e6
    fused_floor = case.bytes_moved(fused=True) / bw * 1e6
    shape = (case.tokens, case.hidden, case.n_total, case.slices, r_max, torch.bfloat16)
    dev = sets[0].x.device
    auto = "fused" if fused_wanted("auto", *shape, dev) else "pair"
    tiles16 = tile_bound(case.tokens, case.segments(), 16)  # as the case's LoRAMeta bounds the grid
    fcfg = lookup("fused", fused_key(*shape), dev, default_fused(*shape[:5], tiles16, sm_count(dev)))
    t_auto = t_fused if auto == "fused" else t
    target = case.target_us if case.target_us is not None else (
        case.target_floor_ratio * floor if case.target_floor_ratio else None)
    n_sets = len(sets)
    del sets, ops
    torch.cuda.empty_cache()
    return {
        "case": case.name, "tokens": case.tokens, "adapters": case.adapters, "rank": case.rank,
        "r_max": case.r_max or case.rank, "hidden": case.hidden, "widths": list(case.widths), "input_sets": n_sets,
        "us": t, "shrink_us": t_shrink, "expand_us": t_expand, "torch_gather_bmm_us": t_torch,
        "bytes": case.bytes_moved(), "byte_floor_us": floor, "pct_of_floor": 100 * floor / t,
        "fused_us": t_fused, "fused_bytes": case.bytes_moved(fused=True), "fused_byte_floor_us": fused_floor,
        "fused_pct_of_floor": 100 * fused_floor / t_fused, "fused_config": str(fcfg),
        "fused_recompute_mb": case.recompute_bytes(fcfg.block_n * fcfg.n_steps, fcfg.block_m) / 1e6,
        "auto_path": auto, "auto_us": t_auto,
        "flops": case.flops(), "flop_floor_us": case.flops() / peak * 1e6,
        "target_us": target, "met": None if target is None else t_auto <= target, "rel_err_vs_reference": err,
        "fused_rel_err_vs_reference": err_fused,
        "expand_byte_floor_us": case.expand_bytes() / bw * 1e6, "expand_rows_us": rows[0],
        "expand_rows_best_us": rows[1], "expand_rows_best_config": rows[2], "expand_rows_rel_err_vs_segments": err_rows,
        "rows_pair_us": t_rows_pair, "rows_pair_rel_err_vs_segments": err_rows_pair,
        "loop_pair_us": t_loop, "loop_pair_rel_err_vs_segments": err_loop,
    }


def attention_sets(case):
    from kernels.cases import attention_inputs, input_sets

    return [attention_inputs(case, seed=i) for i in range(input_sets(case.bytes_moved(), l2_bytes(), most=32))]


def bench_attention(case, bw: float, peak: float) -> dict:
    import torch

    from kernels.paged_attention import paged_decode_attention
    from kernels.reference import paged_decode_attention_ref

    sets = attention_sets(case)
    inp = sets[0]
    out = paged_decode_attention(inp.q, inp.k_cache, inp.v_cache, inp.block_tables, inp.context_lens, inp.scale)
    n_check = min(case.batch, 4)  # the reference loops in Python: check a few sequences
    ref = paged_decode_attention_ref(inp.q[:n_check].float(), inp.k_cache.float(), inp.v_cache.float(),
                                     inp.block_tables[:n_check], inp.context_lens[:n_check], inp.scale)
    err = ((out[:n_check].float() - ref).norm() / ref.norm()).item()
    t = time_sets([lambda i=i: paged_decode_attention(i.q, i.k_cache, i.v_cache, i.block_tables, i.context_lens,
                                                      i.scale) for i in sets])
    floor = case.bytes_moved() / bw * 1e6
    n_sets = len(sets)
    del sets, inp, out, ref
    torch.cuda.empty_cache()
    return {
        "case": case.name, "batch": case.batch, "context": case.context, "hq": case.hq, "hkv": case.hkv,
        "head_dim": case.head_dim, "block_size": case.block_size, "input_sets": n_sets, "us": t,
        "kv_bytes": case.bytes_moved(), "byte_floor_us": floor, "pct_of_floor": 100 * floor / t,
        "flop_floor_us": case.flops() / peak * 1e6, "rel_err_vs_reference": err,
    }


def _fmt(v, nd=1):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def print_tables(result: dict) -> None:
    print(f"\n{result['gpu']}  copy {result['copy_bandwidth_GBps']:.0f} GB/s  bf16 matmul "
          f"{result['matmul_TFLOPs']:.0f} TFLOP/s  torch {result['versions']['torch']}  triton "
          f"{result['versions']['triton']}  one-element kernel in a graph {result['kernel_launch_floor_us']:.1f} us")
    print("LoRA: us = shrink + expand (the pair) in one graph; fused_us = the fused kernel; auto = the path the "
          "engine takes for this shape; floors: bytes once at the copy rate (fused: no fp32 intermediate); "
          "expand_rows = the expand by rows (default config, best of a small space) beside the expand's own floor; "
          "rows_pair = the shrink by rows and the expand by rows that sums its planes; loop_pair = the pair with "
          f"{LOOP_M_PROGRAMS} token-tile programs looping over the real tiles (m_programs)")
    cols = ["case", "us", "fused_us", "auto_path", "shrink_us", "expand_us", "expand_rows_us", "expand_rows_best_us",
            "rows_pair_us", "loop_pair_us",
            "expand_byte_floor_us", "byte_floor_us", "fused_byte_floor_us",
            "pct_of_floor", "fused_pct_of_floor", "fused_recompute_mb", "flop_floor_us", "torch_gather_bmm_us",
            "target_us", "met", "rel_err_vs_reference", "fused_rel_err_vs_reference", "expand_rows_rel_err_vs_segments",
            "rows_pair_rel_err_vs_segments", "loop_pair_rel_err_vs_segments"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in result["lora"]:
        print("| " + " | ".join(_fmt(row[c], 3 if c == "flop_floor_us" else 1) if "rel_err" not in c
                                else _fmt(row[c] if row[c] is None else f"{row[c]:.1e}") for c in cols) + " |")
    cols = ["case", "us", "byte_floor_us", "pct_of_floor", "flop_floor_us", "rel_err_vs_reference"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in result["attention"]:
        print("| " + " | ".join(_fmt(row[c]) if c != "rel_err_vs_reference" else f"{row[c]:.1e}"
                                for c in cols) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__)
    parser.add_argument("--out", type=Path, help="JSON path (default docs/results/kernels-<gpu>.json)")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names to run")
    args = parser.parse_args(argv)
    import torch
    import triton

    from kernels.cases import ATTENTION_CASES, LORA_CASES

    if not torch.cuda.is_available():
        print("kernels.bench needs a CUDA GPU (the Triton kernels are timed there); "
              "on this machine run the tests instead: python -m pytest tests/test_kernels_*.py", file=sys.stderr)
        return 2
    keep = [s for s in args.only.split(",") if s]

    def chosen(cases):
        return [c for c in cases if not keep or any(k in c.name for k in keep)]

    name = torch.cuda.get_device_name()
    bw, peak = copy_bandwidth(), matmul_flops()
    result = {
        "gpu": name, "command": "python -m kernels.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda},
        "pdl_max_tokens": pdl.in_effect(torch.device("cuda")),  # calls of up to this many tokens launch with PDL
        "copy_bandwidth_GBps": bw / 1e9, "matmul_TFLOPs": peak / 1e12, "kernel_launch_floor_us": launch_floor_us(),
        "timing": "median over replays of a CUDA graph that runs the op once per input set, divided by the sets; "
                  "sets rotate through 4x the L2 cache, the step metadata is shared",
        "lora": [bench_lora(c, bw, peak) for c in chosen(LORA_CASES)],
        "attention": [bench_attention(c, bw, peak) for c in chosen(ATTENTION_CASES)],
    }
    out = args.out or ROOT / "docs" / "results" / f"kernels-{gpu_slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
