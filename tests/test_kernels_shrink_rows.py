"""The shrink by rows (kernels.lora_shrink_rows) against the float64 reference: the segment shrink's contract summed
over its partial planes, then the expand by rows reading those planes (CPU: Triton's interpreter; GPU: compiled)."""
import pytest
import torch

from kernels.launch import ShrinkRowsConfig, shrink_rows_space, step_down
from kernels.lora_expand_rows import lora_expand_rows
from kernels.lora_shrink_rows import default_shrink_rows, lora_shrink_rows
from kernels.meta import LoRAMeta
from tests.test_kernels_lora import DEV, SHRINK_TOL, check_expand, make_inputs, rand_slots, reference_pair, rel


def run_rows(hidden, widths, ranks, slots, dtype, cfg=None, seed=0):
    """Shrink by rows into a NaN-poisoned buf, then the expand by rows over what it returned; both against the
    float64 reference. Returns the shrink's result (buf itself, or its partial planes)."""
    s, r_max, t, n_total = len(widths), max(max(ranks), 1), len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, t, dtype, seed)
    buf_ref, y_ref = reference_pair(inputs, slots)

    meta = LoRAMeta(max(t, 1), 8, device=DEV).prepare(slots)
    buf = torch.full((s, t, r_max), float("nan"), dtype=torch.float32, device=DEV)
    got = lora_shrink_rows(x.to(DEV), a.to(DEV), meta, scales.to(DEV), ranks_t.to(DEV), buf, config=cfg)
    planes = got if got.dim() == 4 else got.unsqueeze(0)
    assert planes.shape[1:] == buf.shape
    written = ~buf_ref.isnan()
    if got.dim() == 3:
        assert got is buf
        assert torch.equal(buf.cpu().isnan(), buf_ref.isnan()), "shrink wrote outside (or missed) its rows/ranks"
    total = planes.cpu().double().sum(0)
    if written.any():
        assert rel(total[written], buf_ref[written]) < SHRINK_TOL
    y = y0.to(DEV).clone()
    lora_expand_rows(got, b.to(DEV), meta, ranks_t.to(DEV), offs.to(DEV), y)
    check_expand(y.cpu(), y0, y_ref, slots, ranks, n_total, dtype)
    return got


@pytest.mark.parametrize("hidden,widths,ranks,dtype", [
    (896, [896], [8, 16], torch.float32),  # a hidden size that is not a power of two
    (1024, [512, 128, 128], [1, 8, 16, 64], torch.bfloat16),  # mixed ranks over three slices
    (384, [440, 72], [16, 64, 8], torch.float16),
])
def test_random_mappings(hidden, widths, ranks, dtype):
    run_rows(hidden, widths, ranks, rand_slots(11, len(ranks), seed=hidden), dtype)


@pytest.mark.parametrize("cfg", [ShrinkRowsConfig(block_m=1, block_k=64, split_k=1),  # one plane: into buf itself
                                 ShrinkRowsConfig(block_m=2, block_k=32, split_k=3),  # shares of 96, 96 and 32 of 224
                                 ShrinkRowsConfig(block_m=4, block_k=64, split_k=16)])  # more shares than K steps
def test_planes_and_uneven_shares(cfg):
    got = run_rows(256 if cfg.split_k != 3 else 256 - 32, [48, 16], [16, 8, 4], [0, 1, 2, -1, 1, 0, 2], torch.float32,
                   cfg=cfg)
    if cfg.split_k == 1:
        assert got.dim() == 3
    else:  # never an empty share: each plane holds at least one K step
        assert got.dim() == 4 and 1 < got.shape[0] <= cfg.split_k


def test_rows_in_slot_order_with_tails_past_the_adapter_tokens():
    # programs of four rows: some over one adapter, some over two, and rows past the step's adapter tokens
    run_rows(320, [96, 48], [16, 40, 40], [0, 0, 0, 2, 2, 2, 2, 2, 2, -1, 2, 0], torch.bfloat16,
             cfg=ShrinkRowsConfig(block_m=4, block_k=64, split_k=2))


def test_no_adapter_token_writes_nothing():
    got = run_rows(128, [64, 32], [8, 16], [-1] * 5, torch.float32, cfg=ShrinkRowsConfig(block_k=64, split_k=1))
    assert got.isnan().all()


def test_single_token_rank_128():
    run_rows(512, [128, 32, 32], [128], [0], torch.float32)


def test_default_and_space_stay_within_the_register_tile():
    # qkv slots of rank 16 to 128: the default's and the space's A tiles stay within 16K elements a step
    for r in (8, 16, 64, 128):
        for t in (1, 64, 256):
            d = default_shrink_rows(t, 4096, 3, r)
            assert d.block_m * d.block_k * 4 * max(16, r) <= 16384 and d.split_k >= 1
            space = shrink_rows_space(t, r, 3)
            assert space and all(c.block_m * c.block_k * 4 * r <= 16384 for c in space)
    assert step_down(ShrinkRowsConfig(block_m=2, block_k=16)) == ShrinkRowsConfig(block_m=1, block_k=16)
    assert step_down(ShrinkRowsConfig(block_m=1, block_k=16)) is None
