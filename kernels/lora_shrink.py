"""Triton LoRA shrink: buf[s, t, :r] = scale * x[t] @ A_s[slot[t]].T for mixed adapters, ranks and slices."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl
from kernels.launch import ShrinkConfig, default_shrink, launch_fitting, lookup, shrink_key, sm_count
from kernels.meta import LoRAMeta
from kernels.interpret import patch_interpreter, upcast_bf16_dot
from kernels.tiles import hidden_shares, locate_tile, segment_lens, tile_bound, tile_total

patch_interpreter()

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, out_ptr, ws_ptr, cnt_ptr,
    tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, scale_ptr, rank_ptr,
    hidden, k_per_split, r_max, r_steps,
    stride_xt, stride_xh,
    stride_aslot, stride_as, stride_ar, stride_ah,
    stride_os, stride_ot, stride_or,
    S: tl.constexpr, S_PAD: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, USE_GDC: tl.constexpr, LOOP_M: tl.constexpr,
):
    """One program: BLOCK_M tokens of one segment x all S slices x one 1/SPLIT_K share of the hidden dim.

    Columns of the accumulator are (slice, rank) pairs: c = slice * BLOCK_R + r, so x is loaded once per
    K step for every slice. Ranks are looped up to the slot's own rank; rows of A past it are never read.
    USE_GDC (launched with PDL, kernels/pdl.py): the segment metadata is read before waiting for the kernel before.
    LOOP_M: axis 0 has fewer programs than the host's bound of tiles (ShrinkConfig.m_programs), each looping over
    the step's real tiles (counted on the device) with that stride, instead of one program per tile of the bound.
    """
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    ks = tl.program_id(1)
    lens = segment_lens(nseg_ptr, seg_len_ptr, SEG_POW2, SEG_MAX)
    if not LOOP_M:
        _shrink_tile(tl.program_id(0), ks, lens, x_ptr, a_ptr, out_ptr, ws_ptr, cnt_ptr, tok_ptr, seg_start_ptr,
                     seg_len_ptr, seg_slot_ptr, nseg_ptr, scale_ptr, rank_ptr, hidden, k_per_split, r_max,
                     r_steps, stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah, stride_os,
                     stride_ot, stride_or, S, S_PAD, SEG_POW2, SEG_MAX, BLOCK_M, BLOCK_R, BLOCK_K, SPLIT_K,
                     EVEN_K, PREC, UPCAST, USE_GDC)
    else:
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
        total = tile_total(lens, BLOCK_M)
        for pid in range(tl.program_id(0), total, tl.num_programs(0)):
            _shrink_tile(pid, ks, lens, x_ptr, a_ptr, out_ptr, ws_ptr, cnt_ptr, tok_ptr, seg_start_ptr,
                         seg_len_ptr, seg_slot_ptr, nseg_ptr, scale_ptr, rank_ptr, hidden, k_per_split, r_max,
                         r_steps, stride_xt, stride_xh, stride_aslot, stride_as, stride_ar, stride_ah, stride_os,
                         stride_ot, stride_or, S, S_PAD, SEG_POW2, SEG_MAX, BLOCK_M, BLOCK_R, BLOCK_K, SPLIT_K,
                         EVEN_K, PREC, UPCAST, False)


@triton.jit
def _shrink_tile(
    pid, ks, lens,
    x_ptr, a_ptr, out_ptr, ws_ptr, cnt_ptr,
    tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, scale_ptr, rank_ptr,
    hidden, k_per_split, r_max, r_steps,
    stride_xt, stride_xh,
    stride_aslot, stride_as, stride_ar, stride_ah,
    stride_os, stride_ot, stride_or,
    S: tl.constexpr, S_PAD: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, WAIT: tl.constexpr,
):
    """Token tile `pid`, hidden share `ks` (the kernel's program); WAIT: griddepcontrol.wait once the
    tile's metadata is read (PDL)."""
    seg, m_tile, valid = locate_tile(pid, lens, BLOCK_M, SEG_POW2)
    if valid:
        slot = tl.load(seg_slot_ptr + seg)
        start = tl.load(seg_start_ptr + seg)
        length = tl.load(seg_len_ptr + seg)
        rank = tl.minimum(tl.load(rank_ptr + slot), r_max)
        scale = tl.load(scale_ptr + slot)
        offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < length
        tok = tl.load(tok_ptr + start + offs_m, mask=m_mask, other=0).to(tl.int64)
        if WAIT:
            tl.extra.cuda.gdc_wait()
        offs_c = tl.arange(0, S_PAD * BLOCK_R)
        c_slice = offs_c // BLOCK_R
        c_r = offs_c % BLOCK_R
        k_lo = ks * k_per_split
        k_hi = tl.minimum(hidden, k_lo + k_per_split)
        offs_k = tl.arange(0, BLOCK_K)
        x_rows = x_ptr + tok[:, None] * stride_xt
        a_base = a_ptr + slot.to(tl.int64) * stride_aslot + c_slice[None, :] * stride_as
        tile = pid * SPLIT_K + ks  # pid is a loop index (a plain int in the interpreter) under LOOP_M
        for r0 in range(0, rank, BLOCK_R):
            c_mask = (c_slice < S) & (r0 + c_r < rank)
            a_cols = a_base + (r0 + c_r)[None, :] * stride_ar
            acc = tl.zeros((BLOCK_M, S_PAD * BLOCK_R), dtype=tl.float32)
            for k0 in range(k_lo, k_hi, BLOCK_K):
                kk = k0 + offs_k
                if EVEN_K:
                    xt = tl.load(x_rows + kk[None, :] * stride_xh, mask=m_mask[:, None], other=0.0)
                    at = tl.load(a_cols + kk[:, None] * stride_ah, mask=c_mask[None, :], other=0.0)
                else:
                    k_mask = kk < k_hi
                    xt = tl.load(x_rows + kk[None, :] * stride_xh, mask=m_mask[:, None] & k_mask[None, :],
                                 other=0.0)
                    at = tl.load(a_cols + kk[:, None] * stride_ah, mask=c_mask[None, :] & k_mask[:, None],
                                 other=0.0)
                if UPCAST:
                    xt = xt.to(tl.float32)
                    at = at.to(tl.float32)
                acc = tl.dot(xt, at, acc, input_precision=PREC)  # (BLOCK_M, S_PAD * BLOCK_R)
            if SPLIT_K == 1:
                out = out_ptr + c_slice[None, :] * stride_os + tok[:, None] * stride_ot + (r0 + c_r)[None, :] * stride_or
                tl.store(out, acc * scale, mask=m_mask[:, None] & c_mask[None, :])
            else:
                # partial sums of this split: ws[tile, r-step, m, c]
                ws = ws_ptr + ((tl.cast(tile, tl.int64) * r_steps + r0 // BLOCK_R) * BLOCK_M
                               + tl.arange(0, BLOCK_M)[:, None]) * (S_PAD * BLOCK_R) + offs_c[None, :]
                tl.store(ws, acc)
        if SPLIT_K > 1:
            tl.debug_barrier()  # every thread's partials are stored before the release below
            arrived = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:  # the last split of this tile sums the partials in a fixed order
                for r0 in range(0, rank, BLOCK_R):
                    c_mask = (c_slice < S) & (r0 + c_r < rank)
                    total = tl.zeros((BLOCK_M, S_PAD * BLOCK_R), dtype=tl.float32)
                    for j in range(SPLIT_K):
                        ws = ws_ptr + ((tl.cast(pid * SPLIT_K + j, tl.int64) * r_steps + r0 // BLOCK_R)
                                       * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]) * (S_PAD * BLOCK_R) + offs_c[None, :]
                        total += tl.load(ws, cache_modifier=".cg")
                    out = (out_ptr + c_slice[None, :] * stride_os + tok[:, None] * stride_ot
                           + (r0 + c_r)[None, :] * stride_or)
                    tl.store(out, total * scale, mask=m_mask[:, None] & c_mask[None, :])
                tl.atomic_xchg(cnt_ptr + pid, 0, sem="relaxed", scope="gpu")  # ready for the next launch
    elif WAIT:
        tl.extra.cuda.gdc_wait()  # every program waits: this kernel's end still implies the one before's


def _check(x, lora_a, meta, scales, ranks, out):
    def fail(msg):
        raise ValueError(f"lora_shrink: {msg}")
    if x.dim() != 2:
        fail(f"x must be [T, H_in], got shape {tuple(x.shape)}")
    if lora_a.dim() != 4:
        fail(f"lora_a must be [num_slots, S, R_max, H_in], got shape {tuple(lora_a.shape)}")
    if out.dim() != 3:
        fail(f"out must be [S, T, R_max], got shape {tuple(out.shape)}")
    if x.dtype not in _DTYPES or lora_a.dtype != x.dtype:
        fail(f"x and lora_a must share a dtype among {_DTYPES}, got {x.dtype} and {lora_a.dtype}")
    if lora_a.shape[3] != x.shape[1]:
        fail(f"lora_a hidden size {lora_a.shape[3]} != x hidden size {x.shape[1]}")
    if lora_a.shape[2] > 128:
        fail(f"R_max={lora_a.shape[2]} > 128 is not supported; use ranks of at most 128")
    if out.dtype != torch.float32 or out.shape[0] != lora_a.shape[1] or out.shape[1] < x.shape[0] \
            or out.shape[2] < lora_a.shape[2]:
        fail(f"out must be float32 [S={lora_a.shape[1]}, >=T={x.shape[0]}, >=R_max={lora_a.shape[2]}], "
             f"got {out.dtype} {tuple(out.shape)}")
    if scales.dtype != torch.float32 or ranks.dtype != torch.int32:
        fail(f"scales must be float32 and ranks int32, got {scales.dtype} and {ranks.dtype}")
    if lora_a.stride(3) != 1:
        fail("lora_a must be contiguous along H_in (its last dimension)")
    devices = {t.device for t in (x, lora_a, out, scales, ranks, meta.token_indices)}
    if len(devices) != 1:
        fail(f"all tensors and the LoRAMeta must be on one device, got {sorted(map(str, devices))}")


def shrink_config(x: torch.Tensor, lora_a: torch.Tensor, meta: LoRAMeta) -> ShrinkConfig:
    """The config lora_shrink launches with when given none: the GPU's tuned one for the shape, else the default."""
    t, hidden = x.shape
    slices, r_max = lora_a.shape[1], lora_a.shape[2]
    tiles16 = tile_bound(t, meta.max_segments, 16)
    return lookup("shrink", shrink_key(t, hidden, slices, r_max, x.dtype), x.device,
                  default_shrink(t, hidden, slices, r_max, tiles16, sm_count(x.device)))


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, meta: LoRAMeta, scales: torch.Tensor,
                ranks: torch.Tensor, out: torch.Tensor, config: ShrinkConfig | None = None) -> torch.Tensor:
    """Shrink, reference loop (kernels.reference.lora_shrink_ref has the same semantics):

        for t with slot[t] = s >= 0, for each slice i, r = ranks[s]:
            out[i, t, :r] = scales[s] * x[t] @ lora_a[s, i, :r, :].T

    x: [T, H_in]; lora_a: [num_slots, S, R_max, H_in]; scales: [num_slots] float32; ranks: [num_slots]
    int32; out: [S, T, R_max] float32. Elements of `out` past a slot's rank and rows of tokens without
    an adapter are not written. No host sync: the grid is a bound from T and meta.max_segments, and
    the kernel reads the segments from the device, so a captured CUDA graph replays after meta.prepare.
    """
    _check(x, lora_a, meta, scales, ranks, out)
    t, hidden = x.shape
    slices, r_max = lora_a.shape[1], lora_a.shape[2]
    if t == 0:
        return out
    key = shrink_key(t, hidden, slices, r_max, x.dtype)
    asked = config or shrink_config(x, lora_a, meta)
    gdc = pdl.use(x.device, t)

    def launch(cfg: ShrinkConfig) -> None:
        n_tiles = tile_bound(t, meta.max_segments, cfg.block_m)
        split, k_per_split = hidden_shares(hidden, cfg.block_k, cfg.split_k)
        s_pad = triton.next_power_of_2(slices)
        if split > 1:
            ws = torch.empty(n_tiles * split * triton.cdiv(r_max, cfg.block_r) * cfg.block_m * s_pad * cfg.block_r,
                             dtype=torch.float32, device=x.device)
            cnt = meta.counters(n_tiles)
        else:
            ws, cnt = out, meta.seg_len  # not read when split == 1
        m_programs = min(cfg.m_programs, n_tiles) if cfg.m_programs > 0 else 0
        _shrink_kernel[(m_programs or n_tiles, split)](
            x, lora_a, out, ws, cnt,
            meta.token_indices, meta.seg_start, meta.seg_len, meta.seg_slot, meta.num_segments_dev, scales, ranks,
            hidden, k_per_split, r_max, triton.cdiv(r_max, cfg.block_r),
            x.stride(0), x.stride(1),
            lora_a.stride(0), lora_a.stride(1), lora_a.stride(2), lora_a.stride(3),
            out.stride(0), out.stride(1), out.stride(2),
            S=slices, S_PAD=s_pad, SEG_POW2=triton.next_power_of_2(meta.max_segments), SEG_MAX=meta.max_segments,
            BLOCK_M=cfg.block_m, BLOCK_R=cfg.block_r, BLOCK_K=cfg.block_k, SPLIT_K=split,
            EVEN_K=k_per_split * split == hidden,
            PREC="ieee" if x.dtype == torch.float32 else "tf32",
            UPCAST=x.dtype == torch.bfloat16 and upcast_bf16_dot(),
            LOOP_M=m_programs > 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **pdl.launch_options(gdc),
        )
    launch_fitting("shrink", key, asked, launch)
    return out
