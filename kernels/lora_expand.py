"""Triton LoRA expand: y[t, off_s:off_s+n_s] += buf[s, t, :r] @ B_s[slot[t]].T for mixed adapters, ranks, slices."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl
from kernels.interpret import patch_interpreter
from kernels.launch import ExpandConfig, default_expand, expand_key, launch_fitting, lookup
from kernels.meta import LoRAMeta
from kernels.tiles import locate_program, segment_lens, tile_bound, tile_total

patch_interpreter()

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_OFFSETS: dict[tuple, torch.Tensor] = {}  # host slice offsets -> their device copy (kept: graphs point at it)


@triton.jit
def expand_rows(h, b_ptr, y_ptr, tok, m_mask, slot, rank, n_start, n_hi,
                  stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
                  BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_STEPS: tl.constexpr, PREC: tl.constexpr):
    """y[tok, n_start + up to N_STEPS * BLOCK_N columns below n_hi] += h @ B[slot, cols, :rank].T, h: the tokens'
    (BLOCK_M, BLOCK_R) float32 rank vectors, zero past rank (lora_fused computes them, the expand loads them)."""
    steps = tl.minimum(N_STEPS, (n_hi - n_start + BLOCK_N - 1) // BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    offs_bn = tl.arange(0, BLOCK_N)
    w = b_ptr + slot.to(tl.int64) * stride_bslot + offs_r[:, None] * stride_bk
    for step in range(0, steps):
        offs_n = n_start + step * BLOCK_N + offs_bn
        n_mask = offs_n < n_hi
        mask = m_mask[:, None] & n_mask[None, :]
        ys = y_ptr + tok[:, None] * stride_yt + offs_n[None, :] * stride_yn
        y = tl.load(ys, mask=mask, other=0.0)  # issued before the weights: the loads overlap
        wt = tl.load(w + offs_n[None, :] * stride_bn, mask=r_mask[:, None] & n_mask[None, :], other=0.0)
        acc = tl.dot(h, wt.to(tl.float32), input_precision=PREC)  # (BLOCK_M, BLOCK_N); 16-bit B exact in fp32
        tl.store(ys, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _expand_tile(
    buf_ptr, b_ptr, y_ptr, tok, m_mask, slot, rank, sl, n_lo, n_hi, n_chunk,
    stride_bs, stride_bt, stride_br, stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_STEPS: tl.constexpr,
    PREC: tl.constexpr,
):
    """y[tok, chunk] += buf[sl, tok, :rank] @ B[slot, chunk, :rank].T over N_STEPS column tiles of one chunk."""
    n_start = n_lo + n_chunk * (BLOCK_N * N_STEPS)
    steps = tl.minimum(N_STEPS, (n_hi - n_start + BLOCK_N - 1) // BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    offs_bn = tl.arange(0, BLOCK_N)
    bufs = buf_ptr + sl * stride_bs + tok[:, None] * stride_bt
    w = b_ptr + slot.to(tl.int64) * stride_bslot
    if rank <= BLOCK_R:  # the common case: one rank step, buf loaded once for every column tile
        r_mask = offs_r < rank
        bt = tl.load(bufs + offs_r[None, :] * stride_br, mask=m_mask[:, None] & r_mask[None, :], other=0.0)
        expand_rows(bt, b_ptr, y_ptr, tok, m_mask, slot, rank, n_start, n_hi,
                    stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, BLOCK_N, BLOCK_R, N_STEPS, PREC)
    else:
        for step in range(0, steps):
            offs_n = n_start + step * BLOCK_N + offs_bn
            n_mask = offs_n < n_hi
            mask = m_mask[:, None] & n_mask[None, :]
            ys = y_ptr + tok[:, None] * stride_yt + offs_n[None, :] * stride_yn
            y = tl.load(ys, mask=mask, other=0.0)  # issued before the weights: the loads overlap
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for r0 in range(0, rank, BLOCK_R):
                r_mask = r0 + offs_r < rank
                bt = tl.load(bufs + (r0 + offs_r)[None, :] * stride_br, mask=m_mask[:, None] & r_mask[None, :],
                             other=0.0)  # (BLOCK_M, BLOCK_R) float32
                wt = tl.load(w + offs_n[None, :] * stride_bn + (r0 + offs_r)[:, None] * stride_bk,
                             mask=r_mask[:, None] & n_mask[None, :], other=0.0)
                acc = tl.dot(bt, wt.to(tl.float32), acc, input_precision=PREC)
            tl.store(ys, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _expand_kernel(
    buf_ptr, b_ptr, y_ptr, off_ptr,
    tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, rank_ptr,
    r_max,
    stride_bs, stride_bt, stride_br,
    stride_bslot, stride_bn, stride_bk,
    stride_yt, stride_yn,
    S: tl.constexpr, S_POW2: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_STEPS: tl.constexpr,
    PREC: tl.constexpr, USE_GDC: tl.constexpr, LOOP_M: tl.constexpr,
):
    """One program: BLOCK_M tokens of one segment x N_STEPS * BLOCK_N output columns of one slice.

    Axis 0 walks the slices' column chunks, axis 1 the segments' token tiles (both flattened, bounds
    from the host, the actual counts from the device), so neighbouring programs stream neighbouring
    columns of one adapter. The rank loop stops at the slot's own rank. USE_GDC (launched with PDL,
    kernels/pdl.py): the segment metadata is read before waiting for the kernel before.

    LOOP_M: axis 1 has fewer programs than the host's bound of tiles (ExpandConfig.m_programs), and each loops over
    the step's real token tiles (counted on the device) with that stride, instead of one program per tile of the
    bound, most of which exit at once when the step has few adapters (64 tokens over one adapter: 4 real of 67).
    """
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    if not LOOP_M:
        _expand_program_at(tl.program_id(1), buf_ptr, b_ptr, y_ptr, off_ptr, tok_ptr, seg_start_ptr, seg_len_ptr,
                           seg_slot_ptr, nseg_ptr, rank_ptr, r_max, stride_bs, stride_bt, stride_br, stride_bslot,
                           stride_bn, stride_bk, stride_yt, stride_yn, S, S_POW2, SEG_POW2, SEG_MAX, BLOCK_M,
                           BLOCK_N, BLOCK_R, N_STEPS, PREC, USE_GDC)
    else:
        total = tile_total(segment_lens(nseg_ptr, seg_len_ptr, SEG_POW2, SEG_MAX), BLOCK_M)
        if USE_GDC:
            tl.extra.cuda.gdc_wait()
        for pid_m in range(tl.program_id(1), total, tl.num_programs(1)):
            _expand_program_at(pid_m, buf_ptr, b_ptr, y_ptr, off_ptr, tok_ptr, seg_start_ptr, seg_len_ptr,
                               seg_slot_ptr, nseg_ptr, rank_ptr, r_max, stride_bs, stride_bt, stride_br,
                               stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn, S, S_POW2, SEG_POW2,
                               SEG_MAX, BLOCK_M, BLOCK_N, BLOCK_R, N_STEPS, PREC, False)


@triton.jit
def _expand_program_at(
    pid_m, buf_ptr, b_ptr, y_ptr, off_ptr, tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, rank_ptr,
    r_max, stride_bs, stride_bt, stride_br, stride_bslot, stride_bn, stride_bk, stride_yt, stride_yn,
    S: tl.constexpr, S_POW2: tl.constexpr, SEG_POW2: tl.constexpr, SEG_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, N_STEPS: tl.constexpr,
    PREC: tl.constexpr, WAIT: tl.constexpr,
):
    """Token tile pid_m x this program's column chunk (program_id(0)); WAIT: griddepcontrol.wait once the
    metadata is read (PDL)."""
    slot, rank, tok, m_mask, sl, n_chunk, n_lo, n_hi = locate_program(
        pid_m, tl.program_id(0), tok_ptr, seg_start_ptr, seg_len_ptr, seg_slot_ptr, nseg_ptr, rank_ptr,
        off_ptr, r_max, S, S_POW2, SEG_POW2, SEG_MAX, BLOCK_M, BLOCK_N * N_STEPS)
    if WAIT:
        tl.extra.cuda.gdc_wait()
    if rank > 0:  # a valid tile of an adapter that has this module
        # slice starts that are multiples of 16 columns (every real model) get 16-byte accesses to y
        if n_lo % 16 == 0:
            _expand_tile(buf_ptr, b_ptr, y_ptr, tok, m_mask, slot, rank, sl, tl.multiple_of(n_lo, 16), n_hi,
                         n_chunk, stride_bs, stride_bt, stride_br, stride_bslot, stride_bn, stride_bk,
                         stride_yt, stride_yn, BLOCK_M, BLOCK_N, BLOCK_R, N_STEPS, PREC)
        else:
            _expand_tile(buf_ptr, b_ptr, y_ptr, tok, m_mask, slot, rank, sl, n_lo, n_hi,
                         n_chunk, stride_bs, stride_bt, stride_br, stride_bslot, stride_bn, stride_bk,
                         stride_yt, stride_yn, BLOCK_M, BLOCK_N, BLOCK_R, N_STEPS, PREC)


def device_offsets(slice_offsets: torch.Tensor, device: torch.device) -> torch.Tensor:
    if slice_offsets.device == device:
        return slice_offsets if slice_offsets.dtype == torch.int32 else slice_offsets.to(torch.int32)
    key = (str(device), tuple(int(v) for v in slice_offsets.tolist()))
    if key not in _OFFSETS:
        _OFFSETS[key] = torch.tensor(key[1], dtype=torch.int32, device=device)
    return _OFFSETS[key]


def _check(buf, lora_b, meta, ranks, slice_offsets, y):
    def fail(msg):
        raise ValueError(f"lora_expand: {msg}")
    if buf.dim() != 3 or buf.dtype != torch.float32:
        fail(f"buf must be float32 [S, T, R_max], got {buf.dtype} {tuple(buf.shape)}")
    if lora_b.dim() != 3:
        fail(f"lora_b must be [num_slots, N_total, R_max], got shape {tuple(lora_b.shape)}")
    if y.dim() != 2 or y.dtype not in _DTYPES or lora_b.dtype not in (y.dtype, torch.float16, torch.bfloat16) \
            or y.dtype not in (lora_b.dtype, torch.float32):
        fail(f"y must be [T, N] and share its dtype (one of {_DTYPES}) with lora_b, or be float32 (a folded LoRA "
             f"output), got y {y.dtype} {tuple(y.shape)} and lora_b {lora_b.dtype}")
    if slice_offsets.dim() != 1 or slice_offsets.numel() != buf.shape[0] + 1:
        fail(f"slice_offsets must have S+1={buf.shape[0] + 1} entries, got shape {tuple(slice_offsets.shape)}")
    if lora_b.shape[1] > y.shape[1]:
        fail(f"lora_b has N_total={lora_b.shape[1]} columns but y only {y.shape[1]}")
    if buf.shape[1] < y.shape[0] or buf.shape[2] < lora_b.shape[2]:
        fail(f"buf {tuple(buf.shape)} must cover T={y.shape[0]} tokens and R_max={lora_b.shape[2]}")
    if ranks.dtype != torch.int32:
        fail(f"ranks must be int32, got {ranks.dtype}")
    devices = {t.device for t in (buf, lora_b, y, ranks, meta.token_indices)}
    if len(devices) != 1:
        fail(f"all tensors and the LoRAMeta must be on one device, got {sorted(map(str, devices))}")


def expand_config(buf: torch.Tensor, lora_b: torch.Tensor, y: torch.Tensor) -> ExpandConfig:
    """The config lora_expand launches with when given none: the GPU's tuned one for the shape, else the default."""
    t, slices, r_max = y.shape[0], buf.shape[0], lora_b.shape[2]
    return lookup("expand", expand_key(t, lora_b.shape[1], slices, r_max, lora_b.dtype), y.device,
                  default_expand(t, lora_b.shape[1], slices, r_max))


def lora_expand(buf: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, ranks: torch.Tensor,
                slice_offsets: torch.Tensor, y: torch.Tensor, config: ExpandConfig | None = None) -> torch.Tensor:
    """Expand, reference loop (kernels.reference.lora_expand_ref has the same semantics; adds into y):

        for t with slot[t] = s >= 0, for each slice i with columns [off_i, off_{i+1}), r = ranks[s]:
            y[t, off_i:off_{i+1}] += buf[i, t, :r] @ lora_b[s, off_i:off_{i+1}, :r].T

    buf: [S, T, R_max] float32; lora_b: [num_slots, N_total, R_max]; slice_offsets: [S + 1] int32 (a
    device tensor on the hot path; a host one is copied once and cached); y: [T, N] in lora_b's dtype, or
    float32 (a LoRA output kept apart for the next op to add: engines.model.llama.lora_linear_folded).
    Rows of tokens without an adapter, slots of rank 0 and columns past N_total are left untouched.
    """
    _check(buf, lora_b, meta, ranks, slice_offsets, y)
    t, n_y = y.shape
    slices, r_max = buf.shape[0], lora_b.shape[2]
    if t == 0:
        return y
    key = expand_key(t, lora_b.shape[1], slices, r_max, lora_b.dtype)  # y may be float32 (a folded output)
    asked = config or expand_config(buf, lora_b, y)
    offs = device_offsets(slice_offsets, y.device)
    gdc = pdl.use(y.device, t)

    def launch(cfg: ExpandConfig) -> None:
        m_bound = tile_bound(t, meta.max_segments, cfg.block_m)
        m_programs = min(cfg.m_programs, m_bound) if cfg.m_programs > 0 else 0
        grid = (tile_bound(n_y, slices, cfg.block_n * cfg.n_steps), m_programs or m_bound)
        _expand_kernel[grid](
            buf, lora_b, y, offs,
            meta.token_indices, meta.seg_start, meta.seg_len, meta.seg_slot, meta.num_segments_dev, ranks,
            r_max,
            buf.stride(0), buf.stride(1), buf.stride(2),
            lora_b.stride(0), lora_b.stride(1), lora_b.stride(2),
            y.stride(0), y.stride(1),
            S=slices, S_POW2=triton.next_power_of_2(slices), SEG_POW2=triton.next_power_of_2(meta.max_segments),
            SEG_MAX=meta.max_segments,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=cfg.block_r, N_STEPS=cfg.n_steps,
            # a float32 y (float32 weights, or a folded LoRA output) keeps float32's precision; a 16-bit y is
            # rounded far coarser than tf32's rounding of the rank vectors
            PREC="ieee" if torch.float32 in (lora_b.dtype, y.dtype) else "tf32",
            LOOP_M=m_programs > 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **pdl.launch_options(gdc),
        )
    launch_fitting("expand", key, asked, launch)
    return y
