"""GPU probe for issue 15: would reading a layer's adapter weights into L2 beside the MLP of the layer before make
its LoRA kernels cheaper by more than the read costs?

Per layer of the llama3-8b shape at 64 decode tokens over 64 rank-16 adapters (8 layers, each with its own MLP
weights and adapter set, so nothing stays in L2 by accident), CUDA graphs of:
  mlp            gate+up then down (64 tokens; cuBLASLt, as the engine runs 64-token passes)
  pair           the q,k,v LoRA pair by rows (shrink + expand), weights from HBM
  mlp+pair       the MLP, then the next layer's pair: what the engine's step does (the pair beside the q,k,v
                 matmul aside)
  mlp|pf+pair    the same, with the next layer's adapter blocks prefetched on a side stream beside the MLP
                 (kernels/lora_prefetch.py; evict_last, evict_normal)
  pf+pair        the prefetch then the pair, one stream: the pair's time with its weights just read
  pf             the prefetch alone
µs per layer (median of graph replays), beside the byte floors at the measured copy rate; a table and JSON.

    python scripts/l2_prefetch_probe.py [--out docs/results/h200/run16/runs/prefetch.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kernels.bench import copy_bandwidth, graph_of, rows_pair_op  # noqa: E402
from kernels.cases import LORA_CASES, lora_inputs  # noqa: E402
from kernels.lora_prefetch import lora_prefetch  # noqa: E402

LAYERS, DIM, INTER, TOKENS = 8, 4096, 14336, 64


def time_graph(fn, replays: int = 30) -> float:
    graph = graph_of(fn)
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/prefetch-probe.json")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("l2_prefetch_probe: needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.preferred_blas_library("cublaslt")
    case = next(c for c in LORA_CASES if c.name == "decode-64x64-r16-qkv")
    first = lora_inputs(case, seed=0)
    sets = [first] + [lora_inputs(case, seed=i, meta=first.meta) for i in range(1, LAYERS)]
    pairs = [rows_pair_op(s) for s in sets]
    dev, bf16 = "cuda", torch.bfloat16
    gate_up = [torch.randn(2 * INTER, DIM, device=dev, dtype=bf16) * 0.02 for _ in range(LAYERS)]
    down = [torch.randn(DIM, INTER, device=dev, dtype=bf16) * 0.02 for _ in range(LAYERS)]
    h = torch.randn(TOKENS, DIM, device=dev, dtype=bf16)
    sink = torch.zeros(TOKENS, device=dev)
    side = torch.cuda.Stream()

    def mlp(layer):
        g = F.linear(h, gate_up[layer])
        F.linear(g[:, :INTER], down[layer])

    def prefetch(layer, eviction):
        s = sets[layer]
        lora_prefetch(s.lora_a, s.lora_b, s.meta, TOKENS, sink, eviction)

    def mlp_then_pair(eviction=None):
        def run():
            for layer in range(LAYERS):
                nxt = (layer + 1) % LAYERS
                main = torch.cuda.current_stream()
                if eviction:
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        prefetch(nxt, eviction)
                mlp(layer)
                if eviction:
                    main.wait_stream(side)
                pairs[nxt]()
        return run

    variants = {
        "mlp": lambda: [mlp(layer) for layer in range(LAYERS)],
        "pair": lambda: [pairs[layer]() for layer in range(LAYERS)],
        "mlp+pair": mlp_then_pair(),
        "mlp|pf(evict_last)+pair": mlp_then_pair("evict_last"),
        "mlp|pf(evict_normal)+pair": mlp_then_pair("evict_normal"),
        "pf(evict_last)+pair": lambda: [(prefetch(layer, "evict_last"), pairs[layer]()) for layer in range(LAYERS)],
        "pf(evict_last)": lambda: [prefetch(layer, "evict_last") for layer in range(LAYERS)],
    }
    bw = copy_bandwidth(dev)
    lora_mb = case.bytes_moved() / 1e6
    mlp_mb = (2 * INTER * DIM + DIM * INTER) * 2 / 1e6
    floors = {"mlp": mlp_mb, "pair": lora_mb, "mlp+pair": mlp_mb + lora_mb}
    rows = []
    for order in (1, 2):  # each variant twice, in turn
        for name, fn in variants.items():
            us = time_graph(fn) / LAYERS
            rows.append(dict(variant=name, round=order, us_per_layer=us))
    out_rows = []
    print(f"copy rate {bw / 1e12:.2f} TB/s; the pair's bytes {lora_mb:.1f} MB, the MLP's {mlp_mb:.1f} MB a layer")
    print("| variant | µs a layer (two rounds) | byte floor µs |")
    print("|---|---|---|")
    for name in variants:
        got = [r["us_per_layer"] for r in rows if r["variant"] == name]
        mb = floors.get(name, floors["mlp+pair"] if name.startswith("mlp|") else floors["pair"])
        floor = mb * 1e6 / bw * 1e6  # µs; the prefetched variants read the pair's bytes once from HBM, if L2 keeps them
        out_rows.append(dict(variant=name, us_per_layer=got, byte_floor_us=floor))
        print(f"| {name} | {' / '.join(f'{u:.1f}' for u in got)} | {floor:.1f} |")
    path = Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                    copy_bytes_per_s=bw, lora_mb=lora_mb, mlp_mb=mlp_mb, rows=out_rows), indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
