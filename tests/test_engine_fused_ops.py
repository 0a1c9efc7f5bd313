"""FusedOps (Triton: run by the interpreter on the CPU, compiled on a GPU) against TorchOps: norms, RoPE + cache write,
SiLU-mul. Tensors live on DEV: compiled kernels given host tensors would read host addresses."""
import pytest
import torch

from engines.model.llama import TorchOps
from kernels.fused_ops import FusedOps


DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV, dtype)


@pytest.mark.parametrize("dim", [64, 96])
def test_rms_norm_and_add_rms_norm(dim):
    x, res, w = rand(5, dim, seed=1), rand(5, dim, seed=2), rand(dim, seed=3)
    torch.testing.assert_close(FusedOps.rms_norm(x, w, 1e-5), TorchOps.rms_norm(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    ref_out, ref_res = TorchOps.add_rms_norm(x, res.clone(), w, 1e-6)
    res2 = res.clone()
    out, got_res = FusedOps.add_rms_norm(x, res2, w, 1e-6)
    assert got_res is res2  # the residual stream is updated in place
    torch.testing.assert_close(got_res, ref_res, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hd", [16, 24])
def test_rope_and_cache_write(hd):
    n_heads, n_kv, t, bs, nb = 4, 2, 6, 4, 8
    qkv = rand(t, (n_heads + 2 * n_kv) * hd, seed=4)
    positions = torch.tensor([0, 1, 2, 7, 30, 100], device=DEV)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=DEV).float() / hd))
    slots = torch.tensor([5, 6, 7, 12, 29, 3], device=DEV)
    caches = [torch.full((nb, bs, n_kv, hd), float("nan"), device=DEV) for _ in range(4)]
    ref = TorchOps.rope_and_cache(qkv.clone(), TorchOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd,
                                  caches[0], caches[1], slots)
    got = FusedOps.rope_and_cache(qkv.clone(), FusedOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd,
                                  caches[2], caches[3], slots)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    for r, g in zip(caches[:2], caches[2:]):  # same rows written, the rest untouched (still NaN)
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert torch.isnan(caches[2].view(-1, n_kv, hd)[0]).all()


def test_silu_mul():
    gu = rand(3, 2 * 1500, seed=5)
    torch.testing.assert_close(FusedOps.silu_mul(gu), TorchOps.silu_mul(gu), atol=1e-5, rtol=1e-5)


def test_rejects_rows_that_are_not_contiguous():
    with pytest.raises(ValueError, match="contiguous rows"):
        FusedOps.rms_norm(rand(8, 4).t(), rand(8), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_folded_lora_output_is_added_as_the_expand_kernel_adds_it(dtype):
    """delta (a float32 LoRA output, computed beside the base matmul) folded into the next op gives what the op
    gives after the expand kernel has added it into the base output (x + delta, rounded to the dtype)."""
    dim, n_heads, n_kv, hd, t = 64, 4, 2, 16, 6
    x, res, w = rand(t, dim, seed=1, dtype=dtype), rand(t, dim, seed=2, dtype=dtype), rand(dim, seed=3, dtype=dtype)
    d = rand(t, dim, seed=6) * 0.1
    added = (x.float() + d).to(dtype)  # what lora_expand leaves in y
    # the interpreter rounds bfloat16 its own way (1 ulp off torch without any delta too): exact for torch only
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=1.6e-2)
    want_out, want_r = TorchOps.add_rms_norm(added, res.clone(), w, 1e-6)
    for ops, close in ((TorchOps, dict(atol=0, rtol=0)), (FusedOps, tol)):
        out, r = ops.add_rms_norm(x, res.clone(), w, 1e-6, delta=d)
        torch.testing.assert_close(r, want_r, **close)
        torch.testing.assert_close(out, want_out, **(close if ops is TorchOps else tol))
    _, without = FusedOps.add_rms_norm(x, res.clone(), w, 1e-6)
    assert not torch.allclose(without.float(), want_r.float(), **tol)  # a dropped delta would be seen
    width = (n_heads + 2 * n_kv) * hd
    qkv, dq = rand(t, width, seed=4, dtype=dtype), rand(t, width, seed=7) * 0.1
    positions = torch.tensor([0, 1, 2, 7, 30, 100], device=DEV)
    slots = torch.tensor([5, 6, 7, 12, 29, 3], device=DEV)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=DEV).float() / hd))
    caches = [torch.zeros((8, 4, n_kv, hd), dtype=dtype, device=DEV) for _ in range(6)]
    want = TorchOps.rope_and_cache((qkv.float() + dq).to(dtype), TorchOps.rope_tables(positions, inv_freq), n_heads,
                                   n_kv, hd, caches[0], caches[1], slots)
    ref = TorchOps.rope_and_cache(qkv.clone(), TorchOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd,
                                  caches[2], caches[3], slots, delta=dq)
    got = FusedOps.rope_and_cache(qkv.clone(), FusedOps.rope_tables(positions, inv_freq), n_heads, n_kv, hd,
                                  caches[4], caches[5], slots, delta=dq)
    for w_, r_, g_ in zip(want, ref, got):  # q, k, v (v too: the prompt attention reads it from qkv)
        torch.testing.assert_close(r_, w_, atol=0, rtol=0)
        torch.testing.assert_close(g_, w_, **tol)
    for w_, g_ in zip(caches[:2], caches[4:]):
        torch.testing.assert_close(g_, w_, **tol)
