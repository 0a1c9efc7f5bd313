"""Triton L2 prefetch of one layer's adapter weights for a step (issue 15; measured by scripts/l2_prefetch_probe.py,
not used by the engine): for each of the step's adapter slots (LoRAMeta's segments), read the slot's whole A block
[S, R_max, hidden] and B block [N, R_max] with an L2 eviction priority (`evict_last` by default), so that the LoRA
kernels of that layer, launched later, may find them in L2 instead of HBM. Launched beside work that does not need
them (the MLP of the layer before), it would move the adapters' HBM reads off the LoRA kernels' path, if the L2 keeps
the lines that long: what the probe measures.

It stores nothing: each program adds what it read and writes the sum to `sink` only if it equals a value no sum of
real weights takes, so the compiler keeps the loads. Segments past the step's (slot -1) read nothing."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.interpret import patch_interpreter
from kernels.meta import LoRAMeta

patch_interpreter()

EVICTIONS = ("evict_last", "evict_normal", "evict_first")
SENTINEL = -1.2345e-37  # a sum the loads never make: the sink's store is never taken
BLOCK, STEPS = 2048, 8  # elements a load, loads a program: 32 KiB of bf16 a program


@triton.jit
def _prefetch_kernel(a_ptr, b_ptr, seg_slot_ptr, sink_ptr, a_elems, b_elems, stride_aslot, stride_bslot, n_a_chunks,
                     BLOCK: tl.constexpr, STEPS: tl.constexpr, EVICT: tl.constexpr, SENTINEL: tl.constexpr):
    """Program (segment, chunk): chunks below n_a_chunks read A's block of the segment's slot, the rest B's."""
    seg = tl.program_id(0)
    c = tl.program_id(1)
    slot = tl.load(seg_slot_ptr + seg)
    has = slot >= 0
    slot64 = tl.maximum(slot, 0).to(tl.int64)
    if c < n_a_chunks:
        base = a_ptr + slot64 * stride_aslot
        start = c * (BLOCK * STEPS)
        limit = a_elems
    else:
        base = b_ptr + slot64 * stride_bslot
        start = (c - n_a_chunks) * (BLOCK * STEPS)
        limit = b_elems
    limit = tl.where(has, limit, 0)  # a segment past the step's reads nothing
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(STEPS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(base + offs, mask=offs < limit, other=0.0, eviction_policy=EVICT).to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(sink_ptr + seg, total, mask=total == SENTINEL)


def lora_prefetch(lora_a: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, tokens: int, sink: torch.Tensor,
                  eviction: str = "evict_last") -> None:
    """Read the A [slots, S, R_max, hidden] and B [slots, N, R_max] blocks of the step's adapter slots (meta's
    segments, of a step of `tokens` tokens: its grid is bounded by min(tokens, meta.max_segments), so a CUDA graph
    replays it after meta.prepare) into L2 with `eviction` ("evict_last", "evict_normal" or "evict_first"). `sink`:
    a float32 buffer of at least that many elements, never written."""
    if eviction not in EVICTIONS:
        raise ValueError(f"lora_prefetch: eviction {eviction!r}; give one of {EVICTIONS}")
    if not (lora_a[0].is_contiguous() and lora_b[0].is_contiguous()):
        raise ValueError("lora_prefetch: each slot's A and B block must be contiguous")
    segs = min(tokens, meta.max_segments)
    if segs == 0:
        return
    if sink.dtype != torch.float32 or sink.numel() < segs:
        raise ValueError(f"lora_prefetch: sink must be float32 with at least {segs} elements")
    a_elems, b_elems = lora_a[0].numel(), lora_b[0].numel()
    per = BLOCK * STEPS
    n_a, n_b = triton.cdiv(a_elems, per), triton.cdiv(b_elems, per)
    _prefetch_kernel[(segs, n_a + n_b)](
        lora_a, lora_b, meta.seg_slot, sink, a_elems, b_elems, lora_a.stride(0), lora_b.stride(0), n_a,
        BLOCK=BLOCK, STEPS=STEPS, EVICT="" if eviction == "evict_normal" else eviction, SENTINEL=SENTINEL,
        num_warps=4,
    )
