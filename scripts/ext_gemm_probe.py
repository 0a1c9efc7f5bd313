"""Probe (issue 15, run 17): what the LoRA shrink costs when its A rows ride in the base matmul.

For the q,k,v and o matmuls of the llama3-8b shape at a few token counts, times (CUDA graphs over weight copies past
the L2, the library the engine picks at that token count) the base matmul alone, the base matmul with every slot's A
rows appended to the weight (one matmul: base output and every slot's rank vectors), and the shrink as a matmul of
its own; prints µs beside the byte floor of the extra rows. Run on the GPU: python3 scripts/ext_gemm_probe.py
"""
import json
import sys

import torch

from engines.model import blas
from engines.model.blas_bench import _time_cuda
from kernels.bench import l2_bytes
from kernels.cases import input_sets

dev, dt = torch.device("cuda"), torch.bfloat16
bw = 4.3e12
rows = []
for name, n, k, per_slot in (("qkv", 6144, 4096, 48), ("o", 4096, 4096, 16)):
    for slots in (1, 8, 32, 64):
        extra = slots * per_slot
        for t in (1, 16, 64, 96):
            lib = "cublaslt" if t <= blas.MAX_TOKENS else "cublas"
            x = torch.randn(t, k, device=dev, dtype=dt)
            res = {}
            for label, nn in (("base", n), ("ext", n + extra), ("shrink", extra)):
                ws = [torch.randn(nn, k, device=dev, dtype=dt) * 0.02 for _ in range(input_sets(nn * k * 2, l2_bytes(), most=8))]
                res[label] = _time_cuda(ws, x, lib, 64, 7) * 1e6
                del ws
            floor = extra * k * 2 / bw * 1e6
            row = dict(matmul=name, slots=slots, tokens=t, library=lib, base_us=res["base"], ext_us=res["ext"],
                       shrink_us=res["shrink"], extra_us=res["ext"] - res["base"], extra_floor_us=floor)
            rows.append(row)
            print(f"{name:4} slots {slots:3} tokens {t:3} {lib:8} base {res['base']:7.2f} ext {res['ext']:7.2f} "
                  f"(+{res['ext'] - res['base']:5.2f}) shrink alone {res['shrink']:6.2f}  A bytes floor {floor:5.2f} us",
                  flush=True)
json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ext_gemm.json", "w"), indent=1)
