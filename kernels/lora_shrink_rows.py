"""Triton LoRA shrink by rows (BGMV-like, for decode): each program takes a few token rows, each with its own adapter,
and one share of the hidden dimension, so it needs no segments and no split-K reduction of its own: with the hidden
dimension split, each share writes its partial rank vectors to a plane of its own, and the expand by rows
(kernels.lora_expand_rows) sums the planes in a fixed order as it reads them. The segment shrink
(kernels.lora_shrink) finds its segment first and reduces its splits through a semaphore; at decode over many
adapters, a token or two a segment, both cost it dependent round trips before and after the weights stream.
Same semantics as lora_shrink, summed over the planes."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl as pdl_switch
from kernels.interpret import patch_interpreter
from kernels.launch import ShrinkRowsConfig, launch_fitting, lookup, shrink_key
from kernels.lora_shrink import _check
from kernels.meta import LoRAMeta
from kernels.tiles import hidden_shares

patch_interpreter()


@triton.jit
def _a_chunk(a_rows, kk, k_hi, c_ok, stride_ah, EVEN_K: tl.constexpr):
    """(BLOCK_M, C, BLOCK_K) of the rows' adapters' A at hidden columns kk."""
    if EVEN_K:
        return tl.load(a_rows[:, :, None] + kk[None, None, :] * stride_ah, mask=c_ok[:, :, None], other=0.0)
    return tl.load(a_rows[:, :, None] + kk[None, None, :] * stride_ah,
                   mask=c_ok[:, :, None] & (kk < k_hi)[None, None, :], other=0.0)


@triton.jit
def _x_chunk(x_rows, kk, k_hi, has, stride_xh, EVEN_K: tl.constexpr):
    """(BLOCK_M, BLOCK_K) of the rows' activations at hidden columns kk."""
    if EVEN_K:
        return tl.load(x_rows[:, None] + kk[None, :] * stride_xh, mask=has[:, None], other=0.0)
    return tl.load(x_rows[:, None] + kk[None, :] * stride_xh, mask=has[:, None] & (kk < k_hi)[None, :], other=0.0)


@triton.jit
def _shrink_rows_kernel(
    x_ptr, a_ptr, out_ptr, tok_ptr, slot_ptr, scale_ptr, rank_ptr,
    T, hidden, k_per_split, r_max,
    stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah,
    stride_op, stride_os, stride_ot, stride_or,
    S: tl.constexpr, S_PAD: tl.constexpr, R_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, USE_GDC: tl.constexpr,
):
    """One program: BLOCK_M rows (tokens in slot order, each with its own slot) x every (slice, rank) column x the
    program's share of the hidden dimension (axis 1), into plane program_id(1) of out.

    Columns are (slice, rank) pairs, c = slice * R_PAD + r, masked past each row's own rank, so a row reads only its
    adapter's rows of A. The product is a float32 multiply-add (each row meets only its own A: no tensor cores).
    USE_GDC (launched with PDL, kernels/pdl.py): the metadata and the first chunk of A are read before waiting for
    the kernel before; x and the stores come after."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = tl.program_id(1)
    m_in = offs_m < T
    slot = tl.load(slot_ptr + offs_m, mask=m_in, other=-1)  # -1 past the step's adapter tokens
    tok = tl.load(tok_ptr + offs_m, mask=m_in, other=0).to(tl.int64)
    has = slot >= 0
    rank = tl.minimum(tl.load(rank_ptr + slot, mask=has, other=0), r_max)  # 0: the row writes nothing
    scale = tl.load(scale_ptr + slot, mask=has, other=0.0)
    offs_c = tl.arange(0, S_PAD * R_PAD)
    c_slice = offs_c // R_PAD
    c_r = offs_c % R_PAD
    c_ok = (c_slice < S)[None, :] & (c_r[None, :] < rank[:, None])  # (BLOCK_M, C)
    a_rows = (a_ptr + slot.to(tl.int64)[:, None] * stride_aslot + c_slice[None, :] * stride_as
              + c_r[None, :] * stride_ar)  # (BLOCK_M, C)
    x_rows = x_ptr + tok * stride_xt
    k_lo = ks * k_per_split
    k_hi = tl.minimum(hidden, k_lo + k_per_split)
    offs_k = tl.arange(0, BLOCK_K)
    at = _a_chunk(a_rows, k_lo + offs_k, k_hi, c_ok, stride_ah, EVEN_K)  # every share has a first chunk
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
    xt = _x_chunk(x_rows, k_lo + offs_k, k_hi, has, stride_xh, EVEN_K)
    # products summed element-wise over the share's chunks, then once across the chunk's columns: one reduction
    # across threads a program, not one a chunk
    acc = xt.to(tl.float32)[:, None, :] * at.to(tl.float32)  # (BLOCK_M, C, BLOCK_K)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        at = _a_chunk(a_rows, k0 + offs_k, k_hi, c_ok, stride_ah, EVEN_K)
        xt = _x_chunk(x_rows, k0 + offs_k, k_hi, has, stride_xh, EVEN_K)
        acc += xt.to(tl.float32)[:, None, :] * at.to(tl.float32)
    out = (out_ptr + ks * stride_op + c_slice[None, :] * stride_os + tok[:, None] * stride_ot
           + c_r[None, :] * stride_or)
    tl.store(out, tl.sum(acc, axis=2) * scale[:, None], mask=c_ok)


def default_shrink_rows(tokens: int, hidden: int, slices: int, max_rank: int) -> ShrinkRowsConfig:
    """One row a program with 8 warps on a step of up to 16K elements of A, the hidden dimension split into about
    512 / tokens shares: the shape `kernels.tune` chose on the H200 for 1, 64 and 256 tokens at rank 16 (run 11;
    it split 16, 4-8 and 1-2 ways there)."""
    cols = triton.next_power_of_2(slices) * triton.next_power_of_2(max_rank)
    block_k = max(16, min(256, 16384 // cols))
    split = max(1, min(16, 512 // max(tokens, 1), hidden // block_k))
    return ShrinkRowsConfig(block_m=1, block_k=block_k, split_k=split, num_warps=8)


def lora_shrink_rows(x: torch.Tensor, lora_a: torch.Tensor, meta: LoRAMeta, scales: torch.Tensor,
                     ranks: torch.Tensor, out: torch.Tensor, config: ShrinkRowsConfig | None = None,
                     pdl: bool | None = None) -> torch.Tensor:
    """kernels.lora_shrink.lora_shrink's contract, reading the tokens in slot order with their slots
    (meta.token_indices, meta.sorted_slot) instead of the segments. Returns the rank vectors: `out` itself when the
    config does not split the hidden dimension, else a new float32 [P, S, T, R_max] of P partial planes whose sum
    over the first dimension is what `out` would hold (kernels.lora_expand_rows takes either). Elements past a slot's
    rank and rows without an adapter are not written, in every plane. pdl: launch with PDL (kernels/pdl.py; default
    where it is enabled and supported)."""
    _check(x, lora_a, meta, scales, ranks, out)
    t, hidden = x.shape
    slices, r_max = lora_a.shape[1], lora_a.shape[2]
    if t == 0:
        return out
    key = shrink_key(t, hidden, slices, r_max, x.dtype)
    asked = config or lookup("shrink_rows", key, x.device, default_shrink_rows(t, hidden, slices, r_max))
    planes = [out]
    gdc = pdl_switch.use(x.device, t) if pdl is None else pdl

    def launch(cfg: ShrinkRowsConfig) -> None:
        _, k_per_split = hidden_shares(hidden, cfg.block_k, cfg.split_k)
        split = triton.cdiv(hidden, k_per_split)  # no empty share: each writes a plane the expand sums
        dst = out.unsqueeze(0) if split == 1 else torch.empty(split, *out.shape, dtype=out.dtype, device=out.device)
        _shrink_rows_kernel[(triton.cdiv(t, cfg.block_m), split)](
            x, lora_a, dst, meta.token_indices, meta.sorted_slot, scales, ranks,
            t, hidden, k_per_split, r_max,
            x.stride(0), x.stride(1),
            lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), lora_a.stride(3),
            dst.stride(0), dst.stride(1), dst.stride(2), dst.stride(3),
            S=slices, S_PAD=triton.next_power_of_2(slices), R_PAD=triton.next_power_of_2(r_max),
            BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k, EVEN_K=k_per_split * split == hidden,
            num_warps=cfg.num_warps, **pdl_switch.launch_options(gdc),
        )
        planes[0] = out if split == 1 else dst
    launch_fitting("shrink_rows", key, asked, launch)
    return planes[0]
