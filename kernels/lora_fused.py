"""Triton fused LoRA for decode: y[t, cols] += (scale * x[t] @ A_s^T) @ B_s[cols]^T in one launch, rank vector on chip."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.interpret import patch_interpreter, upcast_bf16_dot
from kernels.launch import FusedConfig, default_fused, fused_key, launch_fitting, lookup, sm_count
from kernels.lora_expand import device_offsets, expand_rows
from kernels.meta import LoRAMeta
from kernels.tiles import hidden_shares, locate_program, tile_bound

patch_interpreter()

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _shrink_rows(x_ptr, a_ptr, tok, m_mask, slot, sl, rank, k_lo, k_hi,
                 stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah,
                 BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 PREC: tl.constexpr, UPCAST: tl.constexpr):
    """x[tok, k_lo:k_hi] @ A[slot, sl, :rank, k_lo:k_hi].T: (BLOCK_M, BLOCK_R) float32, 0 past rank."""
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + tok[:, None] * stride_xt
    a_cols = a_ptr + slot.to(tl.int64) * stride_aslot + sl * stride_as + offs_r[None, :] * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        if EVEN_K:
            xt = tl.load(x_rows + kk[None, :] * stride_xh, mask=m_mask[:, None], other=0.0)
            at = tl.load(a_cols + kk[:, None] * stride_ah, mask=r_mask[None, :], other=0.0)
        else:
            k_mask = kk < k_hi
            xt = tl.load(x_rows + kk[None, :] * stride_xh, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            at = tl.load(a_cols + kk[:, None] * stride_ah, mask=r_mask[None, :] & k_mask[:, None], other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            at = at.to(tl.float32)
        acc = tl.dot(xt, at, acc, input_precision=PREC)  # (BLOCK_M, BLOCK_R)
    return acc


@triton.jit
def _expand_program(h, b_ptr, y_ptr, tok, m_mask, slot, rank, n_lo, n_hi, n_chunk,
                    stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
                    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_STEPS: tl.constexpr, PREC: tl.constexpr):
    """The program's chunk of columns of its slice: y[tok, chunk] += h @ B[slot, chunk, :rank].T."""
    n_start = n_lo + n_chunk * (BLOCK_N * N_STEPS)
    # slice starts that are multiples of 16 columns (every real model) get 16-byte accesses to y
    if n_lo % 16 == 0:
        expand_rows(h, b_ptr, y_ptr, tok, m_mask, slot, rank, tl.multiple_of(n_start, 16), n_hi,
                    stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, BLOCK_N, BLOCK_R, N_STEPS, PREC)
    else:
        expand_rows(h, b_ptr, y_ptr, tok, m_mask, slot, rank, n_start, n_hi,
                    stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, BLOCK_N, BLOCK_R, N_STEPS, PREC)


@triton.jit
def _fused_kernel(
    x_ptr, a_ptr, b_ptr, y_ptr, off_ptr, ws_ptr, cnt_ptr,
    tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, scale_ptr, rank_ptr,
    hidden, k_per_split, r_max,
    stride_xt, stride_xh,
    stride_aslot, stride_as, stride_ar, stride_ah,
    stride_bslot, stride_bn, stride_bk,
    stride_yt, stride_yn,
    S: tl.constexpr, S_POW2: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    N_STEPS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, PREC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One program: BLOCK_M tokens of one segment x one chunk of N_STEPS * BLOCK_N columns of one slice.

    It computes its tokens' rank vector for its slice (the shrink, over the whole hidden dimension), keeps
    it in registers and expands it into its chunk of y. Axis 0 walks the slices' chunks, axis 1 the
    segments' token tiles, as in lora_expand: the programs of one token tile (one adapter) run next to
    each other, so the recomputations read that adapter's A from L2.

    SPLIT_K > 1 (axis 2): each program shrinks a 1/SPLIT_K share of the hidden dimension into a workspace;
    the last of a (tile, chunk) pair's programs to arrive (an acq_rel counter, put back to 0 after) sums the
    shares in a fixed order and expands: fewer sequential loop steps per program when tiles are few.
    """
    slot, rank, tok, m_mask, sl, n_chunk, n_lo, n_hi = locate_program(
        tl.program_id(1), tl.program_id(0), tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, rank_ptr,
        off_ptr, r_max, S, S_POW2, SEG_POW2, SEG_MAX, BLOCK_M, BLOCK_N * N_STEPS)
    if rank > 0:  # a valid tile of an adapter that has this module
        ks = tl.program_id(2)
        k_lo = ks * k_per_split
        h = _shrink_rows(x_ptr, a_ptr, tok, m_mask, slot, sl, rank, k_lo, tl.minimum(hidden, k_lo + k_per_split),
                         stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah,
                         BLOCK_M, BLOCK_R, BLOCK_K, EVEN_K, PREC, UPCAST)
        last = True
        if SPLIT_K > 1:
            pair = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
            offs_h = tl.arange(0, BLOCK_M)[:, None] * BLOCK_R + tl.arange(0, BLOCK_R)[None, :]
            tl.store(ws_ptr + (pair.to(tl.int64) * SPLIT_K + ks) * (BLOCK_M * BLOCK_R) + offs_h, h)
            tl.debug_barrier()  # every thread's share is stored before the release below
            arrived = tl.atomic_add(cnt_ptr + pair, 1, sem="acq_rel", scope="gpu")
            last = arrived == SPLIT_K - 1
            if last:  # sum the shares in a fixed order (deterministic), then reset the counter
                h = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for j in range(SPLIT_K):
                    h += tl.load(ws_ptr + (pair.to(tl.int64) * SPLIT_K + j) * (BLOCK_M * BLOCK_R) + offs_h,
                                 cache_modifier=".cg")
                tl.atomic_xchg(cnt_ptr + pair, 0, sem="relaxed", scope="gpu")
        if last:
            h = h * tl.load(scale_ptr + slot)
            _expand_program(h, b_ptr, y_ptr, tok, m_mask, slot, rank, n_lo, n_hi, n_chunk,
                            stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, BLOCK_N, BLOCK_R, N_STEPS, PREC)


def _check(x, lora_a, lora_b, meta, scales, ranks, slice_offsets, y):
    def fail(msg):
        raise ValueError(f"lora_fused: {msg}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        fail(f"x must be [T, H_in] and y [T, N] with the same T, got {tuple(x.shape)} and {tuple(y.shape)}")
    if lora_a.dim() != 4 or lora_b.dim() != 3:
        fail(f"lora_a must be [num_slots, S, R_max, H_in] and lora_b [num_slots, N_total, R_max], got "
             f"{tuple(lora_a.shape)} and {tuple(lora_b.shape)}")
    if x.dtype not in _DTYPES or {lora_a.dtype, lora_b.dtype, y.dtype} != {x.dtype}:
        fail(f"x, lora_a, lora_b and y must share a dtype among {_DTYPES}, got {x.dtype}, {lora_a.dtype}, "
             f"{lora_b.dtype} and {y.dtype}")
    if lora_a.shape[3] != x.shape[1]:
        fail(f"lora_a hidden size {lora_a.shape[3]} != x hidden size {x.shape[1]}")
    if lora_a.shape[0] != lora_b.shape[0] or lora_a.shape[2] != lora_b.shape[2]:
        fail(f"lora_a {tuple(lora_a.shape)} and lora_b {tuple(lora_b.shape)} must agree on slots and R_max")
    if lora_a.shape[2] > 128:
        fail(f"R_max={lora_a.shape[2]} > 128 is not supported; use ranks of at most 128")
    if slice_offsets.dim() != 1 or slice_offsets.numel() != lora_a.shape[1] + 1:
        fail(f"slice_offsets must have S+1={lora_a.shape[1] + 1} entries, got shape {tuple(slice_offsets.shape)}")
    if lora_b.shape[1] > y.shape[1]:
        fail(f"lora_b has N_total={lora_b.shape[1]} columns but y only {y.shape[1]}")
    if scales.dtype != torch.float32 or ranks.dtype != torch.int32:
        fail(f"scales must be float32 and ranks int32, got {scales.dtype} and {ranks.dtype}")
    devices = {t.device for t in (x, lora_a, lora_b, y, scales, ranks, meta.token_indices)}
    if len(devices) != 1:
        fail(f"all tensors and the LoRAMeta must be on one device, got {sorted(map(str, devices))}")


def lora_fused(x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, scales: torch.Tensor,
               ranks: torch.Tensor, slice_offsets: torch.Tensor, y: torch.Tensor,
               config: FusedConfig | None = None) -> torch.Tensor:
    """Shrink and expand in one launch, the same function as lora_shrink into a buffer then lora_expand:

        for t with slot[t] = s >= 0, for each slice i with columns [off_i, off_{i+1}), r = ranks[s]:
            y[t, off_i:off_{i+1}] += (scales[s] * x[t] @ lora_a[s, i, :r, :].T) @ lora_b[s, off_i:off_{i+1}, :r].T

    x: [T, H_in]; lora_a: [num_slots, S, R_max, H_in]; lora_b: [num_slots, N_total, R_max]; y: [T, N >=
    N_total], all one dtype; scales float32, ranks int32 [num_slots]; slice_offsets [S + 1] int32. Rows of
    tokens without an adapter, slots of rank 0 and columns past N_total are left untouched. No host sync:
    the grid is a bound and the segments are read on the device, so a captured CUDA graph replays after
    meta.prepare. Each program recomputes its tile's rank vector (cheap in decode: see default_fused).
    """
    _check(x, lora_a, lora_b, meta, scales, ranks, slice_offsets, y)
    t, hidden = x.shape
    slices, r_max, n_total = lora_a.shape[1], lora_a.shape[2], lora_b.shape[1]
    if t == 0:
        return y
    key = fused_key(t, hidden, n_total, slices, r_max, x.dtype)
    tiles16 = tile_bound(t, meta.max_segments, 16)
    asked = config or lookup("fused", key, x.device,
                             default_fused(t, hidden, n_total, slices, r_max, tiles16, sm_count(x.device)))
    offs = device_offsets(slice_offsets, x.device)
    block_r = max(16, triton.next_power_of_2(r_max))  # the whole rank vector stays in registers

    def launch(cfg: FusedConfig) -> None:
        grid = (tile_bound(n_total, slices, cfg.block_n * cfg.n_steps), tile_bound(t, meta.max_segments, cfg.block_m))
        split, k_per_split = hidden_shares(hidden, cfg.block_k, cfg.split_k)
        if split > 1:  # one share of the rank vector per (program pair, split); a counter per program pair
            ws = torch.empty(grid[0] * grid[1] * split * cfg.block_m * block_r, dtype=torch.float32, device=x.device)
            cnt = meta.counters(grid[0] * grid[1])
        else:
            ws, cnt = y, meta.seg_len  # not read when split == 1
        _fused_kernel[grid + (split,)](
            x, lora_a, lora_b, y, offs, ws, cnt,
            meta.token_indices, meta.seg_start, meta.seg_len, meta.seg_slot, meta.num_segments_dev, scales, ranks,
            hidden, k_per_split, r_max,
            x.stride(0), x.stride(1),
            lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), lora_a.stride(3),
            lora_b.stride(0), lora_b.stride(1), lora_b.stride(2),
            y.stride(0), y.stride(1),
            S=slices, S_POW2=triton.next_power_of_2(slices), SEG_POW2=triton.next_power_of_2(meta.max_segments),
            SEG_MAX=meta.max_segments,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=block_r, BLOCK_K=cfg.block_k, N_STEPS=cfg.n_steps,
            SPLIT_K=split, EVEN_K=k_per_split * split == hidden,
            PREC="ieee" if x.dtype == torch.float32 else "tf32",
            UPCAST=x.dtype == torch.bfloat16 and upcast_bf16_dot(),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    launch_fitting("fused", key, asked, launch)
    return y
