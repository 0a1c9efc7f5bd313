"""The CPU decode attention (kernels.reference, batched) against a plain loop over sequences in float64."""
import pytest
import torch

from kernels.reference import paged_decode_attention_ref


def loop_attention(q, k_cache, v_cache, tables, ctx, scale):
    """The definition, one sequence at a time."""
    bt, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(bt, hq, d, dtype=torch.float64)
    for b in range(bt):
        n = int(ctx[b])
        for h in range(hq):
            keys = torch.stack([k_cache[tables[b, j // bs], j % bs, h // (hq // hkv)] for j in range(n)]) if n else None
            if keys is None:
                continue
            vals = torch.stack([v_cache[tables[b, j // bs], j % bs, h // (hq // hkv)] for j in range(n)])
            w = (scale * keys.double() @ q[b, h].double()).softmax(0)
            out[b, h] = w @ vals.double()
    return out


def case(ctx_lens, hq, hkv, d, bs, dtype=torch.float32, seed=0, fill=-1):
    g = torch.Generator().manual_seed(seed)
    b = len(ctx_lens)
    width = max(1, -(-max(ctx_lens) // bs)) + 2
    nblocks = b * width + 3
    k = torch.randn(nblocks, bs, hkv, d, generator=g).to(dtype)
    v = torch.randn(nblocks, bs, hkv, d, generator=g).to(dtype)
    q = torch.randn(b, hq + 1, d, generator=g).to(dtype)[:, 1:]  # a strided view, as from a fused projection
    tables = torch.full((b, width), fill, dtype=torch.int32)
    perm = torch.randperm(nblocks, generator=g)
    for i, n in enumerate(ctx_lens):  # only the blocks a sequence uses are set; the rest hold `fill`
        used = -(-n // bs)
        tables[i, :used] = perm[i * width:i * width + used].to(torch.int32)
    return q, k, v, tables, torch.tensor(ctx_lens, dtype=torch.int32), d ** -0.5


@pytest.mark.parametrize("ctx_lens,hq,hkv,d,bs", [
    ([1, 16, 17, 70], 8, 2, 32, 16),  # GQA; lengths on, before and after block boundaries
    ([5, 33, 2], 4, 4, 16, 8),  # MHA
    ([9, 1], 8, 1, 24, 4),  # MQA, a head size that is not a power of two
])
def test_batched_equals_the_loop(ctx_lens, hq, hkv, d, bs):
    q, k, v, t, c, s = case(ctx_lens, hq, hkv, d, bs)
    out = paged_decode_attention_ref(q, k, v, t, c, s)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), loop_attention(q, k, v, t, c, s), rtol=1e-5, atol=1e-5)


def test_chunks_give_the_same_result_and_empty_contexts_give_zeros():
    q, k, v, t, c, s = case([0, 7, 40, 3, 0, 25], 4, 2, 16, 8)
    whole = paged_decode_attention_ref(q, k, v, t, c, s)
    chunked = paged_decode_attention_ref(q, k, v, t, c, s, max_elements=1)  # one sequence per chunk
    torch.testing.assert_close(whole, chunked)
    assert torch.equal(whole[0], torch.zeros_like(whole[0])) and torch.equal(whole[4], torch.zeros_like(whole[4]))
    torch.testing.assert_close(whole.double(), loop_attention(q, k, v, t, c, s), rtol=1e-5, atol=1e-5)


def test_float64_stays_float64_and_bf16_is_close():
    q, k, v, t, c, s = case([12, 30], 4, 2, 16, 8, dtype=torch.float64)
    assert paged_decode_attention_ref(q, k, v, t, c, s).dtype == torch.float64
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out = paged_decode_attention_ref(qb, kb, vb, t, c, s)
    torch.testing.assert_close(out.double(), loop_attention(qb, kb, vb, t, c, s), rtol=2e-2, atol=2e-2)


def test_a_batch_sorted_into_several_chunks_keeps_every_row_in_place():
    from kernels.reference import ATTN_CHUNKS, MIN_CHUNK
    n = MIN_CHUNK * (ATTN_CHUNKS + 1) + 5  # more chunks than ATTN_CHUNKS would give at MIN_CHUNK each
    lens = [(i * 37) % 61 for i in range(n)]  # unsorted, with empty contexts among them
    q, k, v, t, c, s = case(lens, 4, 2, 8, 4)
    out = paged_decode_attention_ref(q, k, v, t, c, s)
    torch.testing.assert_close(out.double(), loop_attention(q, k, v, t, c, s), rtol=1e-5, atol=1e-5)
