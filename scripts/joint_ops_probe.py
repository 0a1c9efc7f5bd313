"""Probe (issue 15, run 17): the joint path's consumer kernels at llama3-8b shapes, by launch option.

Times (CUDA graphs of 16 launches over 8 copies of the slots' B, past the L2) the RoPE + cache kernel and the add +
RMSNorm kernel without a LoRA output and with a joint one (64 slots of rank 16, each token its own slot), for the
RoPE kernel's warps and the add + RMSNorm kernel's columns per program and warps; prints µs beside the B byte floor.
Run on the GPU: python3 scripts/joint_ops_probe.py [out.json]
"""
import json
import statistics
import sys

import torch

import kernels.fused_ops as fo
from engines.model.llama import JointOut

dev, dt = torch.device("cuda"), torch.bfloat16
BW, COPIES, REPS = 4.3e12, 8, 16
nh, nkv, hd, dim, slots, r = 32, 8, 128, 4096, 64, 16


def timed(fn) -> float:
    fn(0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(REPS):
            fn(i)
    g.replay()
    out = []
    for _ in range(7):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / REPS)
    return statistics.median(out)


def joint(t, n_total, s_count, b):
    return JointOut(torch.randn(t, slots * s_count * r, device=dev, dtype=dt), b,
                    torch.arange(t, device=dev, dtype=torch.int32) % slots,
                    torch.full((slots,), r, device=dev, dtype=torch.int32), torch.ones(slots, device=dev),
                    None, s_count, r, torch.zeros(t, device=dev, dtype=torch.int32))


rows = []
n_qkv = (nh + 2 * nkv) * hd
bq = [torch.randn(slots, n_qkv, r, device=dev, dtype=dt) * 0.02 for _ in range(COPIES)]
bo = [torch.randn(slots, dim, r, device=dev, dtype=dt) * 0.02 for _ in range(COPIES)]
for t in (1, 16, 64, 96):
    qkv = torch.randn(t, n_qkv + slots * 3 * r, device=dev, dtype=dt)[:, :n_qkv]
    kc, vc = (torch.zeros(4096, 16, nkv, hd, device=dev, dtype=dt) for _ in range(2))
    pos, smap = torch.arange(t, device=dev), torch.arange(t, device=dev) * 3
    inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=dev).float() / hd))
    js = [joint(t, n_qkv, 3, b) for b in bq]
    used = min(t, slots)
    floor_q = used * n_qkv * r * 2 / BW * 1e6
    base = timed(lambda i: fo.FusedOps.rope_and_cache(qkv, (pos, inv), nh, nkv, hd, kc, vc, smap))
    for w in (1, 2, 4, 8):
        fo.JOINT_ROPE_WARPS = w
        us = timed(lambda i: fo.FusedOps.rope_and_cache(qkv, (pos, inv), nh, nkv, hd, kc, vc, smap,
                                                        delta=js[i % COPIES]))
        rows.append(dict(op="rope", tokens=t, warps=w, us=us, plain_us=base, b_floor_us=floor_q))
        print(f"rope  t {t:3d} warps {w}: {us:6.2f} us (no LoRA {base:5.2f}; B floor {floor_q:5.2f})", flush=True)
    fo.JOINT_ROPE_WARPS = 4
    x = torch.randn(t, dim + slots * r, device=dev, dtype=dt)[:, :dim]
    res, wn = torch.randn(t, dim, device=dev, dtype=dt), torch.ones(dim, device=dev, dtype=dt)
    jo = [joint(t, dim, 1, b) for b in bo]
    floor_o = used * dim * r * 2 / BW * 1e6
    base = timed(lambda i: fo.FusedOps.add_rms_norm(x, res, wn, 1e-5))
    for chunk in (128, 256, 512, 1024):
        for w in (2, 4, 8):
            fo.JOINT_NORM_CHUNK, fo.JOINT_NORM_WARPS = chunk, w
            us = timed(lambda i: fo.FusedOps.add_rms_norm(x, res, wn, 1e-5, delta=jo[i % COPIES]))
            rows.append(dict(op="norm", tokens=t, chunk=chunk, warps=w, us=us, plain_us=base, b_floor_us=floor_o))
            print(f"norm  t {t:3d} chunk {chunk:4d} warps {w}: {us:6.2f} us (no LoRA {base:5.2f}; B floor "
                  f"{floor_o:5.2f})", flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/joint_ops.json", "w"), indent=1)
