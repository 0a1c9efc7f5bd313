"""python -m engines.model.blas_bench [--model llama3-8b] [--tokens 1,16,64,128,256]: the base model's matmuls (q,k,v;
o; gate+up; down; lm_head) at each token count through cuBLAS and through cuBLASLt, in µs per matmul beside their byte
and FLOP floors, and a step's worth of them (layers x the four, plus lm_head) per library; a table and JSON.

Each timing replays a CUDA graph of matmuls that rotate over enough weight copies to stream past the L2 cache (torch
reads its preferred library when a matmul is captured, so each library gets its own graph); the median of the
replays. Off CUDA one library (the process's own) is timed eagerly, so the command and its tests run anywhere.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engines.model.config import ModelArgs

LIBRARIES = ("cublas", "cublaslt")


def shapes(args: ModelArgs) -> list[tuple[str, int, int, int]]:
    """(name, out features, in features, times a step runs it) of the base model's matmuls."""
    L = args.n_layers
    return [("qkv", args.q_size + 2 * args.kv_size, args.dim, L), ("o", args.dim, args.q_size, L),
            ("gate_up", 2 * args.intermediate_size, args.dim, L), ("down", args.dim, args.intermediate_size, L),
            ("lm_head", args.vocab_size, args.dim, 1)]


def _time_cuda(weights, x, library: str, reps: int, replays: int) -> float:
    """Seconds per matmul: a graph of `reps` matmuls over the rotating weights, captured with `library`."""
    torch.backends.cuda.preferred_blas_library(library)
    F.linear(x, weights[0])  # the library's handle and workspace exist before capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            F.linear(x, weights[i % len(weights)])
    g.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / reps)
    return statistics.median(times)


def _time_eager(weights, x, reps: int) -> float:
    F.linear(x, weights[0])
    t0 = time.perf_counter()
    for i in range(reps):
        F.linear(x, weights[i % len(weights)])
    return (time.perf_counter() - t0) / reps


def run(model: str, tokens: tuple[int, ...], device: torch.device, dtype: torch.dtype, replays: int = 7) -> dict:
    from kernels.cases import input_sets
    args = ModelArgs.from_name(model)
    cuda = device.type == "cuda"
    from engines.profile import measure_bandwidth, measure_matmul
    bw, flops = measure_bandwidth(device), measure_matmul(device, dtype)
    if cuda:
        from kernels.bench import l2_bytes
        cache, libraries, own = l2_bytes(), LIBRARIES, torch.backends.cuda.preferred_blas_library()
    else:
        cache, libraries, own = 0, ("own",), None
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    try:
        for name, n, k, per_step in shapes(args):
            w_bytes = n * k * elem
            weights = [torch.randn(n, k, device=device, dtype=dtype) * 0.02
                       for _ in range(input_sets(w_bytes, cache, most=8) if cuda else 1)]
            reps = max(8, 2 * len(weights))
            for m in tokens:
                x = torch.randn(m, k, device=device, dtype=dtype)
                us = {lib: 1e6 * (_time_cuda(weights, x, lib, reps, replays) if cuda else _time_eager(weights, x, reps))
                      for lib in libraries}
                moved = w_bytes + (m * k + m * n) * elem
                row = dict(matmul=name, tokens=m, out_features=n, in_features=k, per_step=per_step,
                           byte_floor_us=moved / bw * 1e6, flop_floor_us=2 * m * n * k / flops * 1e6,
                           **{f"{lib}_us": t for lib, t in us.items()}, faster=min(us, key=us.get))
                rows.append(row)
                print(_line(row, libraries), flush=True)
            del weights
    finally:
        if cuda:
            torch.backends.cuda.preferred_blas_library(own)
    return dict(model=model, device=torch.cuda.get_device_name(device) if cuda else "cpu", dtype=str(dtype),
                torch=torch.__version__, copy_bytes_per_s=bw, matmul_flop_per_s=flops, libraries=list(libraries),
                matmuls=rows, steps=step_totals(rows, libraries))


def step_totals(rows: list[dict], libraries) -> list[dict]:
    """Per token count: a step's matmuls (each times per_step) through each library, through the faster one per
    matmul, and at the byte floor, in ms."""
    out = []
    for m in sorted({r["tokens"] for r in rows}):
        mine = [r for r in rows if r["tokens"] == m]
        total = {lib: sum(r[f"{lib}_us"] * r["per_step"] for r in mine) / 1e3 for lib in libraries}
        best = sum(min(r[f"{lib}_us"] for lib in libraries) * r["per_step"] for r in mine) / 1e3
        floor = sum(r["byte_floor_us"] * r["per_step"] for r in mine) / 1e3
        out.append(dict(tokens=m, **{f"{lib}_ms": t for lib, t in total.items()}, best_per_matmul_ms=best,
                        byte_floor_ms=floor))
    return out


def _line(r: dict, libraries) -> str:
    times = "  ".join(f"{lib} {r[f'{lib}_us']:8.1f} us" for lib in libraries)
    floors = f"  byte floor {r['byte_floor_us']:7.1f} us  FLOP floor {r['flop_floor_us']:7.1f} us"
    return f"{r['matmul']:>8} x {r['tokens']:4d} tokens: {times}{floors}  faster: {r['faster']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.model.blas_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b", help="model preset whose matmul shapes are timed (default llama3-8b)")
    p.add_argument("--tokens", default="1,16,32,64,96,128,192,256,512", help="token counts (rows), comma-separated")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--out", default=None, help="JSON path (default docs/results/blas-<gpu>.json)")
    a = p.parse_args(argv)
    try:
        tokens = tuple(int(t) for t in a.tokens.split(",") if t.strip())
        if not tokens or min(tokens) < 1:
            raise ValueError
    except ValueError:
        print(f"--tokens {a.tokens!r}: give token counts >= 1, comma-separated", file=sys.stderr)
        return 2
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = run(a.model, tokens, device, dtype)
    out["command"] = "python -m engines.model.blas_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print("\n| tokens | " + " | ".join(f"{lib} ms" for lib in out["libraries"]) + " | faster per matmul ms | byte floor ms |")
    print("|---|" + "---|" * (len(out["libraries"]) + 2))
    for s in out["steps"]:
        print(f"| {s['tokens']} | " + " | ".join(f"{s[f'{lib}_ms']:.3f}" for lib in out["libraries"])
              + f" | {s['best_per_matmul_ms']:.3f} | {s['byte_floor_ms']:.3f} |")
    path = Path(a.out or f"docs/results/blas-{out['device'].replace(' ', '-').lower()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
