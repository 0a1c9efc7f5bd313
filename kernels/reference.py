"""Pure-torch reference ops with the same signatures as the Triton kernels; used on machines without CUDA."""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.meta import LoRAMeta


def _acc(t: torch.Tensor) -> torch.Tensor:
    """float32 for 16/32-bit inputs; float64 stays float64, so tests can run the reference in float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()  # no call for the common case


ATTN_CHUNKS = 3  # paged_decode_attention_ref: chunks of a batch sorted by length (less padding, more calls)
MIN_CHUNK = 48  # sequences in a chunk at least: fewer calls for small batches


class _Pieces(NamedTuple):
    """A step's LoRA tokens cut into P pieces of C rows (one slot each, padded): see _pieces."""

    slots: torch.Tensor  # (P,) the adapter slot of each piece
    tokens: torch.Tensor  # (P * C,) rows of x; padding repeats the piece's first token
    valid: torch.Tensor  # (P, C) False for padding
    rows: torch.Tensor  # (n,) tokens[valid]: every LoRA token once
    r: int  # the largest rank among the step's slots
    keep_rows: torch.Tensor  # (n, r) element j of row t is below its slot's rank
    keep_pieces: torch.Tensor  # (P, 1, r) likewise per piece


_LAYOUTS: "weakref.WeakKeyDictionary[LoRAMeta, tuple[tuple, _Pieces | None]]" = weakref.WeakKeyDictionary()


def _pieces(meta: LoRAMeta, ranks: torch.Tensor) -> _Pieces | None:
    """The step's segments cut into pieces of at most C tokens, each padded to C, so that one batched
    matmul serves every adapter (no Python loop over segments). C is chosen so that the padded rows stay
    within twice the tokens (C = ceil(tokens / segments) bounds them; the longest segment's length is
    taken when it pads less). None when no token has an adapter of rank > 0.

    Every layer's shrink and expand of a step use the same layout: it is kept per meta until the meta is
    refilled (its tensors' versions change) or the ranks change."""
    host_ranks = ranks.tolist()
    try:
        key = (meta.seg_start._version, meta.seg_len._version, meta.seg_slot._version,
               meta.token_indices._version, tuple(host_ranks))
    except RuntimeError:  # inference tensors keep no version: no caching
        key = None
    cached = _LAYOUTS.get(meta)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    layout = _cut(meta, host_ranks)
    if key is not None:
        _LAYOUTS[meta] = (key, layout)
    return layout


def _cut(meta: LoRAMeta, host_ranks: list[int]) -> _Pieces | None:
    segs = [(s, n, k) for s, n, k in meta.segments() if n > 0 and host_ranks[k] > 0]  # rank 0: nothing to do
    if not segs:
        return None
    r = max(host_ranks[k] for _, _, k in segs)
    n_tok = sum(n for _, n, _ in segs)
    longest = max(n for _, n, _ in segs)
    best, chunk = None, -(-n_tok // len(segs))
    for c in {longest, *(chunk << i for i in range(8) if chunk << i < longest)}:
        cost = c * sum(-(-n // c) for _, n, _ in segs)
        if best is None or (cost, -c) < best[0]:
            best = ((cost, -c), c)
    c = best[1]
    starts, lens, slots = [], [], []
    for s, n, k in segs:
        for off in range(0, n, c):
            starts.append(s + off)
            lens.append(min(c, n - off))
            slots.append(k)
    dev = meta.token_indices.device
    start_t = torch.tensor(starts, device=dev)[:, None]
    ar = torch.arange(c, device=dev)
    valid = ar < torch.tensor(lens, device=dev)[:, None]  # (P, C)
    tokens = meta.token_indices[torch.where(valid, start_t + ar, start_t)].long()  # (P, C)
    piece_ranks = torch.tensor([host_ranks[k] for k in slots], device=dev)
    keep_pieces = torch.arange(r, device=dev) < piece_ranks[:, None, None]  # (P, 1, r)
    keep_rows = keep_pieces.expand(-1, c, -1)[valid]  # (n, r)
    return _Pieces(torch.tensor(slots, device=dev), tokens.reshape(-1), valid, tokens[valid], r, keep_rows,
                   keep_pieces)


def lora_shrink_ref(x: torch.Tensor, lora_a: torch.Tensor, meta: LoRAMeta, scales: torch.Tensor,
                    ranks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Shrink, reference:

        for t with slot[t] = s >= 0, for each slice i, r = ranks[s]:
            out[i, t, :r] = scales[s] * x[t] @ lora_a[s, i, :r, :].T

    x: [T, H_in]; lora_a: [num_slots, S, R_max, H_in]; scales: [num_slots] float32;
    ranks: [num_slots] int32; out: [S, T, R_max] float32. Elements of `out` past a slot's rank,
    and rows of tokens without an adapter, are not written.

    Batched, not a loop over segments: one batched matmul computes every padded piece (_pieces) against
    its slot's A; the valid rows are written back below each slot's rank.
    """
    lay = _pieces(meta, ranks)
    if lay is None:
        return out
    p, c = lay.valid.shape
    s, r = lora_a.shape[1], lay.r
    xs = _acc(x.index_select(0, lay.tokens)).view(p, c, x.shape[1])  # (P, C, H_in)
    a = _acc(lora_a[lay.slots, :, :r, :]).view(p, s * r, -1)  # (P, S*r, H_in)
    res = torch.bmm(xs, a.transpose(1, 2)).mul_(_acc(scales)[lay.slots].to(xs.dtype)[:, None, None])
    res = res[lay.valid].view(-1, s, r).transpose(0, 1)  # (S, n, r): the valid rows
    out[:, lay.rows, :r] = torch.where(lay.keep_rows, res.to(out.dtype), out[:, lay.rows, :r])
    return out


def lora_expand_ref(buf: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, ranks: torch.Tensor,
                    slice_offsets: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Expand, reference (adds into y in place):

        for t with slot[t] = s >= 0, for each slice i with columns [off_i, off_{i+1}), r = ranks[s]:
            y[t, off_i:off_{i+1}] += buf[i, t, :r] @ lora_b[s, off_i:off_{i+1}, :r].T

    buf: [S, T, R_max] float32; lora_b: [num_slots, N_total, R_max] (slices concatenated along N);
    slice_offsets: [S + 1] int32 (host or device) with slice_offsets[-1] = N_total <= y.shape[1];
    y: [T, N_total] in the activation dtype.

    Batched like lora_shrink_ref: one batched matmul per slice over every padded piece; buf and B past a
    slot's rank are masked to zero, so unwritten buf elements never enter the sums.
    """
    lay = _pieces(meta, ranks)
    if lay is None:
        return y
    offs = [int(o) for o in slice_offsets.tolist()]
    p, c = lay.valid.shape
    r = lay.r
    zero = torch.zeros((), dtype=_acc(buf).dtype, device=buf.device)
    bs = torch.where(lay.keep_pieces, _acc(buf[:, lay.tokens, :r]).view(-1, p, c, r), zero)  # (S, P, C, r)
    b = torch.where(lay.keep_pieces, _acc(lora_b[lay.slots, :offs[-1], :r]), zero)  # (P, N_total, r)
    delta = torch.cat([torch.bmm(bs[i], b[:, offs[i]:offs[i + 1]].transpose(1, 2))
                       for i in range(len(offs) - 1)], dim=-1)  # (P, C, N_total)
    y[:, :offs[-1]].index_add_(0, lay.rows, delta[lay.valid].to(y.dtype))
    return y


def joint_expand_ref(s: torch.Tensor, lora_b: torch.Tensor, token_slot: torch.Tensor, ranks: torch.Tensor,
                     scales: torch.Tensor, slice_offsets: torch.Tensor, num_slices: int, max_rank: int) -> torch.Tensor:
    """The joint path's LoRA output (engines/model/llama.py, JointOut), float32 (T, N_total):

        for token t with slot k >= 0 and column c of slice i (slice_offsets[i] <= c < slice_offsets[i + 1]):
            out[t, c] = scales[k] * sum over r < ranks[k] of s[t, (k S + i) R + r] * lora_b[k, c, r]

    s: (T, span x S x R) rank vectors of slots 0..span-1 (R = max_rank, S = num_slices); token_slot (T,), -1 for
    none (a zero row)."""
    t, n_total = s.shape[0], lora_b.shape[1]
    out = torch.zeros(t, n_total, dtype=torch.float64 if s.dtype == torch.float64 else torch.float32, device=s.device)
    rows = (token_slot >= 0).nonzero()[:, 0]
    if rows.numel() == 0:
        return out
    k = token_slot[rows].long()
    sv = _acc(s[rows]).view(rows.numel(), -1, num_slices, max_rank)[torch.arange(rows.numel()), k]  # (n, S, R)
    sv = sv * (torch.arange(max_rank, device=s.device)[None, :] < ranks[k].long()[:, None])[:, None, :]
    bk = _acc(lora_b[k])  # (n, N_total, R)
    offs = slice_offsets.tolist()
    for i in range(num_slices):
        out[rows, offs[i]:offs[i + 1]] = torch.einsum("nr,ncr->nc", sv[:, i], bk[:, offs[i]:offs[i + 1]])
    out[rows] *= scales[k][:, None].to(out.dtype)
    return out


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float, max_elements: int = 1 << 24) -> torch.Tensor:
    """Decode attention over a paged KV cache, one query token per sequence:

        for b: keys = k_cache[block_tables[b, j // B], j % B] for j < context_lens[b] (likewise values)
               out[b, h] = softmax(scale * q[b, h] @ keys[:, h // G].T) @ values[:, h // G]

    q: [Bt, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables: [Bt, max_blocks]
    int32; context_lens: [Bt] int32; returns [Bt, Hq, D] in q's dtype. G = Hq // Hkv (GQA). A sequence
    with no context gives zeros.

    Batched, not a loop over sequences: the sequences are sorted by length and cut into a few chunks
    (at least MIN_CHUNK sequences, at most ATTN_CHUNKS chunks, and at most max_elements gathered K values
    each); a chunk's blocks are gathered up to its longest context, the positions past each sequence's
    length are masked, and one scaled_dot_product_attention call attends for the chunk, the G query heads
    of a KV head taken as G query positions (no copy of K/V per query head). Sorting keeps the padding
    small: a decode batch's contexts range from a prompt's length to prompt plus output.
    """
    bt, hq, d = q.shape
    if bt == 0:
        return torch.zeros_like(q)
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    nblks = (context_lens.long() + block_size - 1) // block_size
    order = torch.argsort(nblks, descending=True)
    host = nblks[order].tolist()
    tables = block_tables.index_select(0, order).long().clamp_(0, k_cache.shape[0] - 1)  # unused ones masked
    ctx = context_lens.index_select(0, order)[:, None]
    qs = _acc(q).view(bt, hkv, hq // hkv, d).index_select(0, order)
    pos = torch.arange(host[0] * block_size, device=q.device)
    size = max(MIN_CHUNK, -(-bt // ATTN_CHUNKS))
    outs, start = [], 0
    while start < bt and host[start] > 0:  # sequences without context stay zero
        nblk = host[start]
        end = min(bt, start + size, start + max(1, max_elements // (nblk * block_size * hkv * d)))
        b, length = end - start, nblk * block_size
        blocks = tables[start:end, :nblk].reshape(-1)
        k = _acc(k_cache.index_select(0, blocks)).view(b, length, hkv, d).transpose(1, 2)  # (b, Hkv, L, D)
        v = _acc(v_cache.index_select(0, blocks)).view(b, length, hkv, d).transpose(1, 2)
        keep = pos[:length] < ctx[start:end]  # (b, L)
        outs.append(F.scaled_dot_product_attention(qs[start:end], k, v, attn_mask=keep[:, None, None, :],
                                                   scale=scale))  # (b, Hkv, G, D)
        start = end
    sorted_out = torch.cat(outs + [qs.new_zeros(bt - start, hkv, hq // hkv, d)]).view(bt, hq, d)
    return torch.empty_like(q).index_copy_(0, order, sorted_out.to(q.dtype))
