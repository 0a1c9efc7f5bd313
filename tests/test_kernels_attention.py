"""Triton paged decode attention against the float64 reference (CPU: Triton's interpreter; GPU: compiled)."""
import pytest
import torch

from kernels.launch import AttentionConfig
from kernels.paged_attention import paged_decode_attention
from kernels.reference import paged_decode_attention_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# softmax weights are rounded to the cache dtype before the value product, the output once more
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def run_case(ctx_lens, hq, hkv, d, block_size, dtype, config=None, seed=0, spare_blocks=3):
    g = torch.Generator().manual_seed(seed)
    b = len(ctx_lens)
    max_blocks = max(1, -(-max(ctx_lens) // block_size)) + spare_blocks  # wider than needed, like an engine's table
    n_blocks = b * max_blocks + 5
    k = torch.randn(n_blocks, block_size, hkv, d, generator=g).to(dtype)
    v = torch.randn(n_blocks, block_size, hkv, d, generator=g).to(dtype)
    big = torch.randn(b, hq + 2, d, generator=g).to(dtype)
    q = big[:, 1:hq + 1]  # a strided view, as a slice of a fused projection would be
    tables = torch.randperm(n_blocks, generator=g)[:b * max_blocks].view(b, max_blocks).to(torch.int32)
    ctx = torch.tensor(ctx_lens, dtype=torch.int32)
    scale = d ** -0.5
    ref = paged_decode_attention_ref(q.double(), k.double(), v.double(), tables, ctx, scale)
    out = paged_decode_attention(q.to(DEV), k.to(DEV), v.to(DEV), tables.to(DEV), ctx.to(DEV), scale,
                                 config=config).cpu()
    assert out.dtype == dtype and out.shape == (b, hq, d)
    assert not out.isnan().any()
    err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert err < TOL[dtype], err
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("splits", [1, 4])
def test_gqa_llama_like(dtype, splits):
    # Hq/Hkv = 4 as Llama-3-8B (scaled down); lengths on, before and after block boundaries
    run_case([1, 16, 17, 70], 8, 2, 128, 16, dtype, AttentionConfig(pages_per_tile=2, num_splits=splits))


@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 1, 64), (6, 2, 96)])
def test_head_layouts(hq, hkv, d):
    # MHA, MQA, and a head size that is not a power of two
    run_case([5, 33], hq, hkv, d, 8, torch.float32, AttentionConfig(pages_per_tile=2, num_splits=2))


def test_auto_split_and_long_context_small_block():
    run_case([130, 3], 4, 2, 64, 4, torch.bfloat16)


def test_empty_context_gives_zeros_and_others_unaffected():
    out = run_case([0, 9], 4, 2, 64, 8, torch.float32, AttentionConfig(pages_per_tile=1, num_splits=2))
    assert torch.equal(out[0], torch.zeros_like(out[0]))


def test_single_sequence_single_token():
    run_case([1], 2, 1, 64, 16, torch.float16, spare_blocks=0)


def test_bad_inputs_name_the_field():
    q = torch.randn(2, 6, 64)
    kc = torch.randn(10, 16, 4, 64)
    bt = torch.zeros(2, 3, dtype=torch.int32)
    ctx = torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        paged_decode_attention(q, kc, kc, bt, ctx, 0.1)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        paged_decode_attention(torch.randn(2, 8, 64), kc, kc, bt.long(), ctx, 0.1)
    with pytest.raises(ValueError, match="head size"):
        paged_decode_attention(torch.randn(2, 8, 32), kc, kc, bt, ctx, 0.1)
