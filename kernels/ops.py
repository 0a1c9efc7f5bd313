"""Dispatch: Triton kernels on CUDA tensors, the torch references elsewhere (same signatures)."""
from __future__ import annotations

import os

import torch

from kernels import reference

_FORCE_REF = os.environ.get("LORA_FLEET_TORCH_OPS") == "1"


def _triton_ok(t: torch.Tensor) -> bool:
    return t.is_cuda and not _FORCE_REF


def lora_shrink(x, lora_a, meta, scales, ranks, out, rows: bool = False):
    """The rank vectors for lora_expand: `out`, or with rows (the shrink by rows, kernels.lora_shrink_rows, on CUDA)
    possibly partial planes of them, which only the expand by rows (lora_expand's rows=True) takes."""
    if _triton_ok(x):
        if rows:
            from kernels.lora_shrink_rows import lora_shrink_rows as k
        else:
            from kernels.lora_shrink import lora_shrink as k
        return k(x, lora_a, meta, scales, ranks, out)
    return reference.lora_shrink_ref(x, lora_a, meta, scales, ranks, out)


def lora_expand(buf, lora_b, meta, ranks, slice_offsets, y, rows: bool = False, overwrite: bool = False):
    """rows: the expand by rows (each token gathers its own adapter's B; kernels.lora_expand_rows), same result.
    overwrite: y = the expand (0 on tokens without an adapter) instead of y += it; by rows that takes no zeroing
    kernel (y is not read), elsewhere y is zeroed first."""
    if _triton_ok(y) and rows:
        from kernels.lora_expand_rows import lora_expand_rows
        return lora_expand_rows(buf, lora_b, meta, ranks, slice_offsets, y, overwrite=overwrite)
    if overwrite:
        y.zero_()
    if _triton_ok(y):
        from kernels.lora_expand import lora_expand as k
        return k(buf, lora_b, meta, ranks, slice_offsets, y)
    return reference.lora_expand_ref(buf, lora_b, meta, ranks, slice_offsets, y)


def lora_fused(x, lora_a, lora_b, meta, scales, ranks, slice_offsets, y):
    """Shrink + expand in one launch on CUDA; elsewhere the two references through a buffer (same function)."""
    if _triton_ok(y):
        from kernels.lora_fused import lora_fused as k
        return k(x, lora_a, lora_b, meta, scales, ranks, slice_offsets, y)
    buf = torch.empty(lora_a.shape[1], x.shape[0], lora_a.shape[2], device=x.device,
                      dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    reference.lora_shrink_ref(x, lora_a, meta, scales, ranks, buf)
    return reference.lora_expand_ref(buf, lora_b, meta, ranks, slice_offsets, y)


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale):
    if _triton_ok(q):
        from kernels.paged_attention import paged_decode_attention as k
        return k(q, k_cache, v_cache, block_tables, context_lens, scale)
    return reference.paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale)
