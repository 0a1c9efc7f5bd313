"""Triton LoRA expand by rows (BGMV-like, for decode): each program takes a few token rows and gathers each row's
own adapter's B, so it needs no segments: one dependent load (the rows' tokens and slots, read together) before the
weights stream, where the segment kernel (kernels.lora_expand) finds its segment first. Rows go in slot order
(LoRAMeta.token_indices), so rows of one program that share an adapter read the same B lines. Same semantics as
lora_expand."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl as pdl_switch
from kernels.interpret import patch_interpreter
from kernels.launch import ExpandRowsConfig, expand_key, launch_fitting, lookup
from kernels.lora_expand import _check, device_offsets
from kernels.meta import LoRAMeta
from kernels.tiles import locate_tile, tile_bound

patch_interpreter()


@triton.jit
def _b_chunk(w_rows, rs, rank, r_max, mask, stride_bk, LATE_RANK: tl.constexpr):
    """(BLOCK_M, BLOCK_N, BLOCK_R) of the rows' adapters' B at ranks rs (zero past each row's rank). LATE_RANK: the
    load waits only for the rows' slots (ranks up to the slots' r_max) and the rank mask applies after it."""
    if LATE_RANK:
        w = tl.load(w_rows + rs[None, None, :] * stride_bk, mask=mask[:, :, None] & (rs < r_max)[None, None, :],
                    other=0.0)
        return tl.where((rs[None, :] < rank[:, None])[:, None, :], w, 0.0)
    r_in = rs[None, :] < rank[:, None]
    return tl.load(w_rows + rs[None, None, :] * stride_bk, mask=mask[:, :, None] & r_in[:, None, :], other=0.0)


@triton.jit
def _planes(bufs, rs, rank, row, r_max, stride_bp, stride_br, PLANES: tl.constexpr, LATE_RANK: tl.constexpr):
    """(BLOCK_M, BLOCK_R) float32 rank vectors at ranks rs: the shrink's partial planes summed in a fixed order.
    LATE_RANK: row is the rows with a slot, and entries past each row's rank (not written by the shrink) are
    zeroed after the loads."""
    r_in = rs[None, :] < rank[:, None]
    ok = row[:, None] & (rs < r_max)[None, :] if LATE_RANK else row[:, None] & r_in
    h = tl.load(bufs + rs[None, :] * stride_br, mask=ok, other=0.0)
    for p in tl.static_range(1, PLANES):
        h += tl.load(bufs + p * stride_bp + rs[None, :] * stride_br, mask=ok, other=0.0)
    if LATE_RANK:
        h = tl.where(r_in, h, 0.0)
    return h


@triton.jit
def _expand_rows_kernel(
    buf_ptr, b_ptr, y_ptr, off_ptr, tok_ptr, slot_ptr, rank_ptr, T, r_max,
    stride_bp, stride_bs, stride_bt, stride_br, stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
    S: tl.constexpr, S_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    PLANES: tl.constexpr, USE_GDC: tl.constexpr, LATE_RANK: tl.constexpr, OVERWRITE: tl.constexpr,
):
    """One program: BLOCK_M rows (tokens in slot order, each with its own slot) x BLOCK_N columns of one slice.

    Axis 0 walks the slices' column tiles (slice i spans columns off[i]..off[i+1]), axis 1 the rows. The product
    is a float32 multiply-add over the rank (no tensor cores: a row's rank-r vector meets only its own B).
    USE_GDC (launched with PDL, kernels/pdl.py): the metadata and the first rank chunk of B are read before waiting
    for the kernel before (the shrink); the rank vectors, y and the store come after.
    LATE_RANK (ExpandRowsConfig.late_rank): B, y and the rank vectors load as soon as the rows' slots are known;
    the rows' ranks (a load that needs the slot) mask them after.
    OVERWRITE: y is written, not added to, on every row of the step (token_indices lists them all, those without
    an adapter after the others): a fresh buffer needs no zeroing kernel first, and y is not read."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    offs_s = tl.arange(0, S_POW2)
    lo = tl.load(off_ptr + offs_s, mask=offs_s < S, other=0)
    hi = tl.load(off_ptr + offs_s + 1, mask=offs_s < S, other=0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_in = offs_m < T
    slot = tl.load(slot_ptr + offs_m, mask=m_in, other=-1)  # -1 past the step's adapter tokens
    tok = tl.load(tok_ptr + offs_m, mask=m_in, other=0).to(tl.int64)
    sl, n_tile, valid_n = locate_tile(tl.program_id(0), hi - lo, BLOCK_N, S_POW2)
    n_lo = tl.sum(tl.where(offs_s == sl, lo, 0), 0)
    n_hi = tl.where(valid_n, tl.sum(tl.where(offs_s == sl, hi, 0), 0), 0)  # a spare tile: no column
    has = m_in & (slot >= 0)
    rank = tl.minimum(tl.load(rank_ptr + slot, mask=has, other=0), r_max)
    row = has & (rank > 0)
    offs_n = n_lo + n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = row[:, None] & (offs_n < n_hi)[None, :]  # the store's
    early = (has if LATE_RANK else row)[:, None] & (offs_n < n_hi)[None, :]  # the loads'
    ys = y_ptr + tok[:, None] * stride_yt + offs_n[None, :] * stride_yn
    w_rows = b_ptr + slot.to(tl.int64)[:, None, None] * stride_bslot + offs_n[None, :, None] * stride_bn
    bufs = buf_ptr + sl * stride_bs + tok[:, None] * stride_bt
    offs_r = tl.arange(0, BLOCK_R)
    w = _b_chunk(w_rows, offs_r, rank, r_max, early, stride_bk, LATE_RANK)  # rank chunk 0
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
    if not OVERWRITE:
        y = tl.load(ys, mask=early, other=0.0)
    rows = has if LATE_RANK else row
    acc = tl.sum(_planes(bufs, offs_r, rank, rows, r_max, stride_bp, stride_br, PLANES, LATE_RANK)[:, None, :]
                 * w.to(tl.float32), axis=2)
    for r0 in range(BLOCK_R, r_max, BLOCK_R):
        w = _b_chunk(w_rows, r0 + offs_r, rank, r_max, early, stride_bk, LATE_RANK)
        acc += tl.sum(_planes(bufs, r0 + offs_r, rank, rows, r_max, stride_bp, stride_br, PLANES, LATE_RANK)[:, None, :]
                      * w.to(tl.float32), axis=2)
    if OVERWRITE:  # every row of the step: 0 where a token has no adapter (or a rank-0 one)
        tl.store(ys, acc.to(y_ptr.dtype.element_ty), mask=m_in[:, None] & (offs_n < n_hi)[None, :])
    else:
        tl.store(ys, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


def default_expand_rows(max_rank: int) -> ExpandRowsConfig:
    return ExpandRowsConfig(block_m=4, block_n=64, block_r=16 if max_rank <= 16 else 32, num_warps=4)


def lora_expand_rows(buf: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, ranks: torch.Tensor,
                     slice_offsets: torch.Tensor, y: torch.Tensor, config: ExpandRowsConfig | None = None,
                     pdl: bool | None = None, overwrite: bool = False) -> torch.Tensor:
    """kernels.lora_expand.lora_expand's contract (y[t, slice i] += buf[i, t, :r] @ lora_b[slot[t], slice i, :r].T,
    adding into y), reading the tokens in slot order with their slots (meta.token_indices, meta.sorted_slot)
    instead of the segments. buf may also be [P, S, T, R_max], the partial planes of the shrink by rows
    (kernels.lora_shrink_rows): their sum over the first dimension is the rank vectors. pdl: launch with PDL
    (kernels/pdl.py; default where it is enabled and supported). overwrite: y = the expand instead of y += it, on
    every row (0 for tokens without an adapter): y need not be zeroed, nor is it read."""
    planes, plane_stride = (buf.shape[0], buf.stride(0)) if buf.dim() == 4 else (1, 0)
    if buf.dim() == 4:
        buf = buf[0]  # the plane the checks and strides describe; the kernel steps across planes by stride_bp
    _check(buf, lora_b, meta, ranks, slice_offsets, y)
    t, n_y = y.shape
    slices, r_max = buf.shape[0], lora_b.shape[2]
    if t == 0:
        return y
    if overwrite and meta.num_tokens != t:  # rows past the prepared tokens would take stale token indices
        raise ValueError(f"lora_expand_rows(overwrite=True): y has {t} rows, the LoRAMeta was prepared for "
                         f"{meta.num_tokens} tokens")
    key = expand_key(t, lora_b.shape[1], slices, r_max, lora_b.dtype)
    asked = config or lookup("expand_rows", key, y.device, default_expand_rows(r_max))
    offs = device_offsets(slice_offsets, y.device)
    s_pow2 = triton.next_power_of_2(slices)
    gdc = pdl_switch.use(y.device, t) if pdl is None else pdl

    def launch(cfg: ExpandRowsConfig) -> None:
        grid = (tile_bound(n_y, slices, cfg.block_n), triton.cdiv(t, cfg.block_m))  # spare tiles exit at once
        _expand_rows_kernel[grid](
            buf, lora_b, y, offs, meta.token_indices, meta.sorted_slot, ranks, t, r_max,
            plane_stride, buf.stride(0), buf.stride(1), buf.stride(2),
            lora_b.stride(0), lora_b.stride(1), lora_b.stride(2), y.stride(0), y.stride(1),
            S=slices, S_POW2=s_pow2, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r,
            PLANES=planes, LATE_RANK=cfg.late_rank, OVERWRITE=overwrite, num_warps=cfg.num_warps,
            **pdl_switch.launch_options(gdc),
        )
    launch_fitting("expand_rows", key, asked, launch)
    return y
