"""`python -m kernels.bench`: time the LoRA and attention kernels against their byte/FLOP floors; table + JSON."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

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


def median_us(fn, rep_ms: int = 100) -> float:
    """Median of CUDA-graph replays, with L2 flushed before each (do_bench): weights come from HBM."""
    import triton

    graph = graph_of(fn)
    return 1e3 * triton.testing.do_bench(graph.replay, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    import torch
    import triton

    src = torch.randn(1 << 28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def matmul_flops() -> float:
    import torch
    import triton

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    return 2 * 8192 ** 3 / (ms * 1e-3)


def bench_lora(case, bw: float, peak: float) -> dict:
    import torch

    from kernels import reference
    from kernels.cases import lora_inputs, torch_gather_bmm
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink

    inp = lora_inputs(case)
    # correctness on this GPU: y delta against the reference (float32) on the same inputs
    y0 = inp.y.clone()
    lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf)
    lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y)
    buf_ref = torch.zeros_like(inp.buf)
    reference.lora_shrink_ref(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, buf_ref)
    y_ref = y0.float()
    reference.lora_expand_ref(buf_ref, inp.lora_b.float(), inp.meta, inp.ranks, inp.slice_offsets, y_ref)
    err = ((inp.y.float() - y_ref).norm() / (y_ref - y0.float()).norm()).item()

    def both():
        lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf)
        lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y)

    t = median_us(both)
    t_shrink = median_us(lambda: lora_shrink(inp.x, inp.lora_a, inp.meta, inp.scales, inp.ranks, inp.buf))
    t_expand = median_us(lambda: lora_expand(inp.buf, inp.lora_b, inp.meta, inp.ranks, inp.slice_offsets, inp.y))
    t_torch = median_us(lambda: torch_gather_bmm(inp, case.rank))
    floor = case.bytes_moved() / bw * 1e6
    target = case.target_us if case.target_us is not None else (
        case.target_floor_ratio * floor if case.target_floor_ratio else None)
    del inp
    torch.cuda.empty_cache()
    return {
        "case": case.name, "tokens": case.tokens, "adapters": case.adapters, "rank": case.rank,
        "r_max": case.r_max or case.rank, "hidden": case.hidden, "widths": list(case.widths),
        "us": t, "shrink_us": t_shrink, "expand_us": t_expand, "torch_gather_bmm_us": t_torch,
        "bytes": case.bytes_moved(), "byte_floor_us": floor, "pct_of_floor": 100 * floor / t,
        "flops": case.flops(), "flop_floor_us": case.flops() / peak * 1e6,
        "target_us": target, "met": None if target is None else t <= target, "rel_err_vs_reference": err,
    }


def bench_attention(case, bw: float, peak: float) -> dict:
    import torch

    from kernels.cases import attention_inputs
    from kernels.paged_attention import paged_decode_attention
    from kernels.reference import paged_decode_attention_ref

    inp = attention_inputs(case)
    args = (inp.q, inp.k_cache, inp.v_cache, inp.block_tables, inp.context_lens, inp.scale)
    out = paged_decode_attention(*args)
    n_check = min(case.batch, 4)  # the reference loops in Python: check a few sequences
    ref = paged_decode_attention_ref(inp.q[:n_check].float(), inp.k_cache.float(), inp.v_cache.float(),
                                     inp.block_tables[:n_check], inp.context_lens[:n_check], inp.scale)
    err = ((out[:n_check].float() - ref).norm() / ref.norm()).item()
    t = median_us(lambda: paged_decode_attention(*args))
    floor = case.bytes_moved() / bw * 1e6
    del inp, args, out
    torch.cuda.empty_cache()
    return {
        "case": case.name, "batch": case.batch, "context": case.context, "hq": case.hq, "hkv": case.hkv,
        "head_dim": case.head_dim, "block_size": case.block_size, "us": t,
        "kv_bytes": case.bytes_moved(), "byte_floor_us": floor, "pct_of_floor": 100 * floor / t,
        "flop_floor_us": case.flops() / peak * 1e6, "rel_err_vs_reference": err,
    }


def _fmt(v, nd=1):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def print_tables(result: dict) -> None:
    print(f"\n{result['gpu']}  copy {result['copy_bandwidth_GBps']:.0f} GB/s  bf16 matmul "
          f"{result['matmul_TFLOPs']:.0f} TFLOP/s  torch {result['versions']['torch']}  triton "
          f"{result['versions']['triton']}")
    cols = ["case", "us", "shrink_us", "expand_us", "byte_floor_us", "pct_of_floor", "flop_floor_us",
            "torch_gather_bmm_us", "target_us", "met", "rel_err_vs_reference"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in result["lora"]:
        print("| " + " | ".join(_fmt(row[c], 3 if c == "flop_floor_us" else 1) if c != "rel_err_vs_reference"
                                else f"{row[c]:.1e}" for c in cols) + " |")
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
        "copy_bandwidth_GBps": bw / 1e9, "matmul_TFLOPs": peak / 1e12,
        "timing": "median of CUDA-graph replays, L2 flushed before each (triton.testing.do_bench)",
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
