"""Triton LoRA shrink/expand against the float64 reference (CPU: Triton's interpreter; GPU: compiled)."""
import pytest
import torch

from kernels.launch import ExpandConfig, ShrinkConfig
from kernels.lora_expand import lora_expand
from kernels.lora_shrink import lora_shrink
from kernels.meta import LoRAMeta
from kernels.reference import lora_expand_ref, lora_shrink_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# buf is an fp32 accumulation of exact products in every dtype; y is rounded to its dtype once
SHRINK_TOL = 1e-4
EXPAND_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make_inputs(hidden, widths, ranks, t, dtype, seed):
    """Random (x, a, b, scales, ranks, slice offsets, y0) for t tokens; y0 has 5 columns past N_total."""
    g = torch.Generator().manual_seed(seed)
    n_slots, s, r_max, n_total = len(ranks), len(widths), max(max(ranks), 1), sum(widths)
    x = torch.randn(t, hidden, generator=g).to(dtype)
    a = (torch.randn(n_slots, s, r_max, hidden, generator=g) / hidden ** 0.5).to(dtype)
    b = (torch.randn(n_slots, n_total, r_max, generator=g) / r_max ** 0.5).to(dtype)
    scales = torch.rand(n_slots, generator=g) + 0.5
    ranks_t = torch.tensor(ranks, dtype=torch.int32)
    offs = torch.tensor([0] + list(torch.tensor(widths).cumsum(0)), dtype=torch.int32)
    y0 = (0.01 * torch.randn(t, n_total + 5, generator=g)).to(dtype)  # 5 columns past N_total stay untouched
    return x, a, b, scales, ranks_t, offs, y0


def reference_pair(inputs, slots, max_segments=8):
    """(buf, y) of the float64 reference shrink (NaN where it writes nothing) and expand on make_inputs' inputs."""
    x, a, b, scales, ranks_t, offs, y0 = inputs
    meta_ref = LoRAMeta(max(len(slots), 1), max_segments).prepare(slots)
    buf_ref = torch.full((a.shape[1], len(slots), a.shape[2]), float("nan"), dtype=torch.float64)
    lora_shrink_ref(x.double(), a.double(), meta_ref, scales.double(), ranks_t, buf_ref)
    y_ref = y0.double().clone()
    lora_expand_ref(buf_ref, b.double(), meta_ref, ranks_t, offs, y_ref)
    return buf_ref, y_ref


def run_case(hidden, widths, ranks, slots, dtype, shrink_cfg=None, expand_cfg=None, max_segments=8, seed=0):
    """Run shrink then expand on NaN-poisoned outputs; compare with the float64 reference."""
    s, r_max, t, n_total = len(widths), max(max(ranks), 1), len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, t, dtype, seed)
    buf_ref, y_ref = reference_pair(inputs, slots, max_segments)

    d = DEV
    meta = LoRAMeta(max(t, 1), max_segments, device=d).prepare(slots)
    buf = torch.full((s, t, r_max), float("nan"), dtype=torch.float32, device=d)
    lora_shrink(x.to(d), a.to(d), meta, scales.to(d), ranks_t.to(d), buf, config=shrink_cfg)
    y = y0.to(d).clone()
    lora_expand(buf, b.to(d), meta, ranks_t.to(d), offs.to(d), y, config=expand_cfg)
    buf, y = buf.cpu(), y.cpu()

    # unwritten elements keep their poison, written ones match
    assert torch.equal(buf.isnan(), buf_ref.isnan()), "shrink wrote outside (or missed) its rows/ranks"
    m = ~buf_ref.isnan()
    if m.any():
        assert rel(buf[m], buf_ref[m]) < SHRINK_TOL
    check_expand(y, y0, y_ref, slots, ranks, n_total, dtype)
    return meta


def check_expand(y, y0, y_ref, slots, ranks, n_total, dtype):
    """An expand's y (on the host) against the reference: no NaN read from buf, columns past N_total and rows
    without an adapter (slot -1 or rank 0) untouched, the rest within the dtype's tolerance."""
    assert not y.isnan().any(), "expand read an unwritten buf element (past a row's rank, or of a row without one)"
    assert torch.equal(y[:, n_total:], y0[:, n_total:]), "expand touched columns past N_total"
    untouched = torch.tensor([sl < 0 or ranks[sl] == 0 for sl in slots], dtype=torch.bool)
    assert torch.equal(y[untouched], y0[untouched]), "expand touched rows without an adapter"
    assert rel(y, y_ref) < EXPAND_TOL[dtype]


def rand_slots(t, n_slots, seed, none_frac=0.25):
    g = torch.Generator().manual_seed(seed)
    slots = torch.randint(0, n_slots, (t,), generator=g)
    slots[torch.rand(t, generator=g) < none_frac] = -1
    return slots.tolist()


@pytest.mark.parametrize("hidden,widths,ranks,dtype", [
    (896, [896], [8, 16], torch.float32),  # Qwen2.5-0.5B hidden, not a power of two
    (1024, [512, 128, 128], [1, 8, 16, 64, 128], torch.bfloat16),  # mixed ranks, qkv-like unequal slices
    (3584, [440, 72], [16, 64, 8], torch.float16),  # Qwen2-7B hidden, two slices, 2nd starts off 16
    (4096, [512, 128, 128], [16, 16, 16, 16], torch.bfloat16),  # Llama-3-8B hidden, qkv ratios
])
def test_random_mappings(hidden, widths, ranks, dtype):
    run_case(hidden, widths, ranks, rand_slots(13, len(ranks), seed=hidden), dtype)


def test_mlp_down_hidden_14336_single_token():
    run_case(14336, [96], [16, 8], [1], torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_tokens_on_one_adapter_spans_several_tiles(dtype):
    cfg_s = ShrinkConfig(block_m=16, block_r=16, block_k=128, split_k=1)
    cfg_e = ExpandConfig(block_m=16, block_n=64, block_r=16)
    run_case(256, [160, 48], [0, 32], [1] * 37, dtype, cfg_s, cfg_e)


@pytest.mark.parametrize("n_steps", [1, 3])
def test_expand_column_chunks_across_unaligned_slices(n_steps):
    # chunks of n_steps x 16 columns end inside slices of 40, 24 and 72 columns; rank 40 > BLOCK_R loops
    cfg_e = ExpandConfig(block_m=16, block_n=16, block_r=16, n_steps=n_steps)
    run_case(64, [40, 24, 72], [8, 40], rand_slots(9, 2, seed=n_steps), torch.float16, expand_cfg=cfg_e)


def test_no_token_on_any_adapter_leaves_everything():
    run_case(128, [64, 32], [8, 16], [-1] * 9, torch.float32)


def test_rank_zero_slot_and_unused_segment_capacity():
    # slot 1 has rank 0 (adapter without this module); meta has room for 64 segments, 3 used
    run_case(192, [96], [8, 0, 4], [0, 1, 2, 1, -1, 0, 2], torch.float16, max_segments=64)


@pytest.mark.parametrize("m_programs,split", [(1, 1), (3, 2), (1000, 1)])
def test_programs_that_loop_over_the_real_tiles(m_programs, split):
    """ShrinkConfig/ExpandConfig.m_programs: fewer token-tile programs than the segment capacity's bound, each
    looping over the step's real tiles (counted on the device; the shrink's split-K semaphores per tile); 1000 is
    capped at the bound. Both match the reference."""
    slots = [0] * 20 + [1] * 3 + [-1] * 2 + [2] * 17  # 3 segments in a capacity of 64: 5 real tiles of 67
    shrink = ShrinkConfig(block_m=16, block_r=16, block_k=64, split_k=split, num_warps=4, num_stages=2,
                          m_programs=m_programs)
    expand = ExpandConfig(block_m=16, block_n=32, block_r=16, n_steps=2, num_warps=4, num_stages=1,
                          m_programs=m_programs)
    meta = run_case(256, [96, 40], [8, 16, 4], slots, torch.float32, shrink_cfg=shrink, expand_cfg=expand,
                    max_segments=64)
    if split > 1:
        assert not meta.counters(1).any()  # every tile's semaphore is back to 0 for the next launch


def test_single_token():
    run_case(896, [128, 32, 32], [128], [0], torch.float32)


@pytest.mark.parametrize("split", [2, 3, 4])
def test_split_k_reduction_and_semaphores_reset(split):
    # 896 = 3.5 blocks of 256: the last split has a partial block, with split 4 one split is empty
    cfg = ShrinkConfig(block_m=16, block_r=16, block_k=256, split_k=split)
    meta = run_case(896, [64], [16, 40, 1], rand_slots(11, 3, seed=split, none_frac=0.1), torch.bfloat16, cfg)
    assert all(int(c.abs().sum()) == 0 for c in meta._counters), "split-K semaphores must return to zero"


def test_refilled_meta_reuses_buffers_like_graph_replay():
    """Same output buffers and meta object, new slot mapping: results follow the new mapping."""
    d = DEV
    g = torch.Generator().manual_seed(7)
    t, h, r = 6, 256, 16
    x = torch.randn(t, h, generator=g)
    a = torch.randn(4, 1, r, h, generator=g) / 16
    b = torch.randn(4, 64, r, generator=g) / 4
    scales, ranks = torch.ones(4), torch.full((4,), r, dtype=torch.int32)
    offs = torch.tensor([0, 64], dtype=torch.int32)
    meta = LoRAMeta(t, 4, device=d)
    buf = torch.empty(1, t, r, device=d)
    cfg = ShrinkConfig(split_k=2, block_k=64)
    for slots in ([0, 1, 2, 3, 0, 1], [3, 3, -1, 2, 2, 2]):
        meta.prepare(slots)
        y = torch.zeros(t, 64, device=d)
        lora_shrink(x.to(d), a.to(d), meta, scales.to(d), ranks.to(d), buf, config=cfg)
        lora_expand(buf, b.to(d), meta, ranks.to(d), offs.to(d), y)
        ref_meta = LoRAMeta(t, 4).prepare(slots)
        buf_ref = torch.zeros(1, t, r, dtype=torch.float64)
        lora_shrink_ref(x.double(), a.double(), ref_meta, scales.double(), ranks, buf_ref)
        y_ref = torch.zeros(t, 64, dtype=torch.float64)
        lora_expand_ref(buf_ref, b.double(), ref_meta, ranks, offs, y_ref)
        assert rel(y.cpu(), y_ref) < 1e-5


def test_host_slice_offsets_are_accepted():
    d = DEV
    meta = LoRAMeta(4, 2, device=d).prepare([0, 0, -1, 0])
    buf = torch.ones(2, 4, 16, device=d)
    b = torch.ones(1, 48, 16, device=d)
    y = torch.zeros(4, 48, device=d)
    lora_expand(buf, b, meta, torch.tensor([4], dtype=torch.int32, device=d), torch.tensor([0, 40, 48],
                dtype=torch.int32), y)
    assert torch.equal(y.cpu()[2], torch.zeros(48))
    assert torch.allclose(y.cpu()[[0, 1, 3]], torch.full((3, 48), 4.0))


def test_bad_inputs_name_the_field():
    meta = LoRAMeta(4, 2).prepare([0, 0, 0, 0])
    x = torch.randn(4, 64)
    a = torch.randn(1, 1, 8, 64)
    ok = dict(scales=torch.ones(1), ranks=torch.tensor([8], dtype=torch.int32))
    with pytest.raises(ValueError, match="hidden size"):
        lora_shrink(x, torch.randn(1, 1, 8, 32), meta, out=torch.empty(1, 4, 8), **ok)
    with pytest.raises(ValueError, match="out must be float32"):
        lora_shrink(x, a, meta, out=torch.empty(1, 4, 8, dtype=torch.float16), **ok)
    with pytest.raises(ValueError, match="share a dtype"):
        lora_shrink(x.half(), a, meta, out=torch.empty(1, 4, 8), **ok)
    with pytest.raises(ValueError, match="ranks must be int32"):
        lora_expand(torch.empty(1, 4, 8), torch.randn(1, 16, 8), meta, torch.tensor([8]),
                    torch.tensor([0, 16], dtype=torch.int32), torch.zeros(4, 16))
    with pytest.raises(ValueError, match="slice_offsets must have S\\+1=2"):
        lora_expand(torch.empty(1, 4, 8), torch.randn(1, 16, 8), meta, ok["ranks"],
                    torch.tensor([0, 8, 16], dtype=torch.int32), torch.zeros(4, 16))


@pytest.mark.parametrize("split", [16, 32])
def test_batch_one_wide_split_over_three_slices(split):
    """Batch 1 splits the hidden dim 16-32 ways (the default on a GPU): partial sums of all three slices."""
    cfg = ShrinkConfig(block_m=16, block_r=16, block_k=64, split_k=split, num_stages=2)
    meta = run_case(2048, [256, 64, 64], [16, 8], [0], torch.bfloat16, cfg)
    assert all(int(c.abs().sum()) == 0 for c in meta._counters)


def test_expand_into_a_float32_output_from_16_bit_weights():
    """A folded LoRA output: bfloat16 B expanded into a float32 buffer (no rounding to 16 bits); a 16-bit y of
    another dtype than B is still refused."""
    d = DEV
    g = torch.Generator().manual_seed(5)
    meta = LoRAMeta(5, 2, device=d).prepare([1, -1, 0, 1, 1])
    buf = torch.randn(2, 5, 16, generator=g).to(d)
    b = torch.randn(2, 48, 16, generator=g).to(torch.bfloat16).to(d)
    ranks, offs = torch.tensor([16, 8], dtype=torch.int32, device=d), torch.tensor([0, 40, 48], dtype=torch.int32)
    y = torch.zeros(5, 48, device=d)
    lora_expand(buf, b, meta, ranks, offs.to(d), y)
    y_ref = torch.zeros(5, 48, dtype=torch.float64)
    lora_expand_ref(buf.double().cpu(), b.double().cpu(), LoRAMeta(5, 2).prepare([1, -1, 0, 1, 1]), ranks.cpu(),
                    offs, y_ref)
    assert rel(y.cpu(), y_ref) < 1e-5 and torch.equal(y.cpu()[1], torch.zeros(48))
    with pytest.raises(ValueError, match="or be float32"):
        lora_expand(buf, b, meta, ranks, offs.to(d), torch.zeros(5, 48, dtype=torch.float16, device=d))
