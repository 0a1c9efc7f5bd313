"""Triton paged decode attention (GQA, split-K over the context like flash-decoding), graph capturable."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import pdl
from kernels.interpret import patch_interpreter, upcast_bf16_dot
from kernels.launch import AttentionConfig, attention_key, default_attention, launch_fitting, lookup, sm_count

patch_interpreter()

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634


@triton.jit
def _attn_split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, ctx_ptr, out_ptr, acc_ptr, ml_ptr,
    qk_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kn, stride_kb, stride_kh, stride_kd,
    stride_vn, stride_vb, stride_vh, stride_vd,
    stride_btb, stride_btj,
    stride_ob, stride_oh, stride_od,
    HKV: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, PAGES: tl.constexpr, NUM_SPLITS: tl.constexpr,
    UPCAST: tl.constexpr, PREC: tl.constexpr, USE_GDC: tl.constexpr,
):
    """One program: the GROUP query heads of one KV head of one sequence over 1/NUM_SPLITS of its context.

    Each split covers a share of that sequence's own blocks (sized from its context length on the
    device), so every split has work whatever the block table's width. With one split the program
    writes the normalised output; otherwise (acc, max, sum) partials that _attn_reduce_kernel merges.
    USE_GDC (PDL, kernels/pdl.py): the context length is read before waiting for the kernel before (the one that
    wrote q and the new token's K and V).
    """
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.program_id(2)
    ctx = tl.load(ctx_ptr + b)
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
    n_blocks = (ctx + BLOCK_SIZE - 1) // BLOCK_SIZE
    per_split = ((n_blocks + NUM_SPLITS - 1) // NUM_SPLITS + PAGES - 1) // PAGES * PAGES
    blk_lo = sp * per_split
    blk_hi = tl.minimum(n_blocks, blk_lo + per_split)
    TOK: tl.constexpr = PAGES * BLOCK_SIZE
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D_PAD)
    g_mask = offs_g < GROUP
    d_mask = offs_d < D
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (h * GROUP + offs_g)[:, None] * stride_qh
                + offs_d[None, :] * stride_qd, mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # (G_PAD, D_PAD)
    offs_t = tl.arange(0, TOK)
    page_of_t = offs_t // BLOCK_SIZE
    row_of_t = offs_t % BLOCK_SIZE
    m_i = tl.full((G_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((G_PAD,), dtype=tl.float32)
    acc = tl.zeros((G_PAD, D_PAD), dtype=tl.float32)
    if UPCAST:
        q = q.to(tl.float32)
    for blk in range(blk_lo, blk_hi, PAGES):
        page_idx = blk + page_of_t
        t_mask = page_idx < blk_hi
        page = tl.load(bt_ptr + b.to(tl.int64) * stride_btb + page_idx * stride_btj, mask=t_mask, other=0)
        valid = t_mask & (page_idx * BLOCK_SIZE + row_of_t < ctx)
        base = page.to(tl.int64)
        k = tl.load(k_ptr + base[:, None] * stride_kn + row_of_t[:, None] * stride_kb + h * stride_kh
                    + offs_d[None, :] * stride_kd, mask=valid[:, None] & d_mask[None, :], other=0.0)  # (TOK, D_PAD)
        v = tl.load(v_ptr + base[:, None] * stride_vn + row_of_t[:, None] * stride_vb + h * stride_vh
                    + offs_d[None, :] * stride_vd, mask=valid[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # (G_PAD, TOK), log2 units
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every step has a valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    heads = h * GROUP + offs_g
    if NUM_SPLITS == 1:
        out = tl.where(l_i[:, None] > 0, acc / tl.maximum(l_i, 1e-30)[:, None], 0.0)
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od,
                 out.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    else:
        row = (b.to(tl.int64) * (HKV * GROUP) + heads) * NUM_SPLITS + sp  # partial index (b, head, split)
        tl.store(acc_ptr + row[:, None] * D_PAD + offs_d[None, :], acc, mask=g_mask[:, None])
        tl.store(ml_ptr + row * 2, m_i, mask=g_mask)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=g_mask)


@triton.jit
def _attn_reduce_kernel(
    acc_ptr, ml_ptr, out_ptr,
    stride_ob, stride_oh, stride_od,
    HQ: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, NUM_SPLITS: tl.constexpr, USE_GDC: tl.constexpr,
):
    """Merge the split partials of one (sequence, query head): out = sum_i w_i acc_i / sum_i w_i l_i."""
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, D_PAD)
    row = (b.to(tl.int64) * HQ + h) * NUM_SPLITS + offs_s
    m = tl.load(ml_ptr + row * 2)
    l = tl.load(ml_ptr + row * 2 + 1)
    m_all = tl.maximum(tl.max(m, 0), -1e30)  # finite even when every split was empty
    w = tl.where(l > 0, tl.exp2(m - m_all), 0.0)
    acc = tl.load(acc_ptr + row[:, None] * D_PAD + offs_d[None, :])  # (NUM_SPLITS, D_PAD)
    den = tl.sum(w * l, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.maximum(den, 1e-30)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < D)


def _check(q, k_cache, v_cache, block_tables, context_lens):
    def fail(msg):
        raise ValueError(f"paged_decode_attention: {msg}")
    if q.dim() != 3:
        fail(f"q must be [B, Hq, D], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        fail(f"k_cache and v_cache must both be [num_blocks, block_size, Hkv, D], got {tuple(k_cache.shape)} "
             f"and {tuple(v_cache.shape)}")
    if q.dtype not in _DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        fail(f"q and the caches must share a dtype among {_DTYPES}, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    bt, hq, d = q.shape
    hkv = k_cache.shape[2]
    if k_cache.shape[3] != d:
        fail(f"head size of q ({d}) != head size of the cache ({k_cache.shape[3]})")
    if d < 16:
        fail(f"head size {d} < 16 is not supported (tl.dot needs 16)")
    if hq % hkv:
        fail(f"Hq={hq} must be a multiple of Hkv={hkv} (grouped-query attention)")
    if block_tables.dim() != 2 or block_tables.shape[0] < bt or block_tables.dtype != torch.int32:
        fail(f"block_tables must be int32 [>=B={bt}, max_blocks], got {block_tables.dtype} {tuple(block_tables.shape)}")
    if context_lens.dim() != 1 or context_lens.shape[0] < bt or context_lens.dtype != torch.int32:
        fail(f"context_lens must be int32 [>=B={bt}], got {context_lens.dtype} {tuple(context_lens.shape)}")
    devices = {t.device for t in (q, k_cache, v_cache, block_tables, context_lens)}
    if len(devices) != 1:
        fail(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _num_splits(cfg: AttentionConfig, batch: int, hkv: int, max_blocks: int, pages: int, device) -> int:
    """Splits so that batch x Hkv x splits programs fill the GPU twice over, within the context's pages."""
    if cfg.num_splits > 0:
        return triton.next_power_of_2(cfg.num_splits)
    sms = sm_count(device)
    want = triton.cdiv(2 * sms, batch * hkv)
    most = max(1, triton.cdiv(max_blocks, pages))
    return triton.next_power_of_2(max(1, min(want, most, 64)))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           config: AttentionConfig | None = None) -> torch.Tensor:
    """Decode attention over a paged KV cache, one query token per sequence (reference loop):

        for b: keys = k_cache[block_tables[b, j // B], j % B] for j < context_lens[b] (likewise values)
               out[b, h] = softmax(scale * q[b, h] @ keys[:, h // G].T) @ values[:, h // G]

    q: [Bt, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables: [Bt, max_blocks]
    int32; context_lens: [Bt] int32 (0 gives zeros); returns [Bt, Hq, D] in q's dtype. G = Hq // Hkv.
    The grid depends on shapes only (no host sync), so it replays in a CUDA graph.
    """
    _check(q, k_cache, v_cache, block_tables, context_lens)
    bt, hq, d = q.shape
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    group = hq // hkv
    out = torch.empty_like(q)
    if bt == 0:
        return out
    max_blocks = block_tables.shape[1]
    key = attention_key(bt, max_blocks, block_size, hq, hkv, d, q.dtype)
    asked = config or lookup("attention", key, q.device, default_attention(bt, max_blocks, block_size, hq, hkv, d))
    d_pad = triton.next_power_of_2(d)
    gdc = pdl.use(q.device, bt)

    def launch(cfg: AttentionConfig) -> None:
        pages = max(cfg.pages_per_tile, triton.cdiv(16, block_size))  # tl.dot needs >= 16 tokens per step
        splits = _num_splits(cfg, bt, hkv, max_blocks, pages, q.device)
        if splits > 1:
            acc = torch.empty(bt * hq * splits * d_pad, dtype=torch.float32, device=q.device)
            ml = torch.empty(bt * hq * splits * 2, dtype=torch.float32, device=q.device)
        else:
            acc = ml = out  # not touched with one split
        _attn_split_kernel[(bt, hkv, splits)](
            q, k_cache, v_cache, block_tables, context_lens, out, acc, ml,
            scale * _LOG2E,
            q.stride(0), q.stride(1), q.stride(2),
            *k_cache.stride(), *v_cache.stride(),
            block_tables.stride(0), block_tables.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            HKV=hkv, GROUP=group, G_PAD=max(16, triton.next_power_of_2(group)), D=d, D_PAD=d_pad,
            BLOCK_SIZE=block_size, PAGES=pages, NUM_SPLITS=splits,
            UPCAST=q.dtype == torch.bfloat16 and upcast_bf16_dot(),
            PREC="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl.launch_options(gdc),
        )
        if splits > 1:
            _attn_reduce_kernel[(bt, hq)](
                acc, ml, out, out.stride(0), out.stride(1), out.stride(2),
                HQ=hq, D=d, D_PAD=d_pad, NUM_SPLITS=splits, num_warps=4, **pdl.launch_options(gdc),
            )
    launch_fitting("attention", key, asked, launch)
    return out
