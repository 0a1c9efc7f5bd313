"""Pure-torch reference ops with the same signatures as the Triton kernels; used on machines without CUDA."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.meta import LoRAMeta


def _acc(t: torch.Tensor) -> torch.Tensor:
    """float32 for 16/32-bit inputs; float64 stays float64, so tests can run the reference in float64."""
    return t if t.dtype == torch.float64 else t.float()


def lora_shrink_ref(x: torch.Tensor, lora_a: torch.Tensor, meta: LoRAMeta, scales: torch.Tensor,
                    ranks: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Shrink, reference loop:

        for t with slot[t] = s >= 0, for each slice i, r = ranks[s]:
            out[i, t, :r] = scales[s] * x[t] @ lora_a[s, i, :r, :].T

    x: [T, H_in]; lora_a: [num_slots, S, R_max, H_in]; scales: [num_slots] float32;
    ranks: [num_slots] int32; out: [S, T, R_max] float32. Elements of `out` past a slot's rank,
    and rows of tokens without an adapter, are not written.
    """
    idx_all = meta.token_indices
    for start, length, slot in meta.segments():
        r = int(ranks[slot])
        idx = idx_all[start:start + length].long()
        xs = _acc(x.index_select(0, idx))  # (n, H_in)
        a = _acc(lora_a[slot, :, :r, :])  # (S, r, H_in)
        out[:, idx, :r] = (float(scales[slot]) * torch.einsum("nh,srh->snr", xs, a)).to(out.dtype)
    return out


def lora_expand_ref(buf: torch.Tensor, lora_b: torch.Tensor, meta: LoRAMeta, ranks: torch.Tensor,
                    slice_offsets: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Expand, reference loop (adds into y in place):

        for t with slot[t] = s >= 0, for each slice i with columns [off_i, off_{i+1}), r = ranks[s]:
            y[t, off_i:off_{i+1}] += buf[i, t, :r] @ lora_b[s, off_i:off_{i+1}, :r].T

    buf: [S, T, R_max] float32; lora_b: [num_slots, N_total, R_max] (slices concatenated along N);
    slice_offsets: [S + 1] int32 (host or device) with slice_offsets[-1] = N_total <= y.shape[1];
    y: [T, N_total] in the activation dtype.
    """
    offs = [int(o) for o in slice_offsets.tolist()]
    idx_all = meta.token_indices
    for start, length, slot in meta.segments():
        r = int(ranks[slot])
        idx = idx_all[start:start + length].long()
        for i in range(len(offs) - 1):
            b = _acc(lora_b[slot, offs[i]:offs[i + 1], :r])  # (N_i, r)
            delta = _acc(buf[i, idx, :r]) @ b.T  # (n, N_i)
            y[idx, offs[i]:offs[i + 1]] += delta.to(y.dtype)
    return y


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float, max_elements: int = 1 << 24) -> torch.Tensor:
    """Decode attention over a paged KV cache, one query token per sequence:

        for b: keys = k_cache[block_tables[b, j // B], j % B] for j < context_lens[b] (likewise values)
               out[b, h] = softmax(scale * q[b, h] @ keys[:, h // G].T) @ values[:, h // G]

    q: [Bt, Hq, D]; k_cache, v_cache: [num_blocks, block_size, Hkv, D]; block_tables: [Bt, max_blocks]
    int32; context_lens: [Bt] int32; returns [Bt, Hq, D] in q's dtype. G = Hq // Hkv (GQA). A sequence
    with no context gives zeros.

    Batched, not a loop over sequences: every sequence's blocks are gathered up to the longest context, the
    positions past its own length are masked, and one scaled_dot_product_attention call (grouped query heads,
    no copy of K/V per query head) attends for the whole batch. The batch is cut into chunks so that one
    gathered K holds at most max_elements values.
    """
    bt, hq, d = q.shape
    out = torch.zeros_like(q)
    if bt == 0:
        return out
    block_size, hkv = k_cache.shape[1], k_cache.shape[2]
    ctx = context_lens.long()
    per_seq = max(1, -(-int(ctx.max()) // block_size) * block_size * hkv * d)
    step = max(1, max_elements // per_seq)
    for start in range(0, bt, step):
        sl = slice(start, min(bt, start + step))
        n = int(ctx[sl].max())
        if n == 0:
            continue
        nblk = -(-n // block_size)
        length = nblk * block_size
        blocks = block_tables[sl, :nblk].long().clamp(0, k_cache.shape[0] - 1).reshape(-1)  # unused ones masked
        b = blocks.numel() // nblk
        k = _acc(k_cache.index_select(0, blocks)).view(b, length, hkv, d).transpose(1, 2)  # (b, Hkv, L, D)
        v = _acc(v_cache.index_select(0, blocks)).view(b, length, hkv, d).transpose(1, 2)
        keep = torch.arange(length, device=q.device) < ctx[sl, None]  # (b, L)
        o = F.scaled_dot_product_attention(_acc(q[sl]).unsqueeze(2), k, v, attn_mask=keep[:, None, None, :],
                                           scale=scale, enable_gqa=hq != hkv)  # (b, Hq, 1, D)
        out[sl] = o.squeeze(2).nan_to_num_(0.0).to(q.dtype)  # a sequence with no context: NaN -> zeros
    return out
