"""The expand by rows (kernels.lora_expand_rows) against the float64 reference: the segment expand's contract,
reading each token's slot in its own order (CPU: Triton's interpreter; GPU: compiled)."""
import pytest
import torch

from kernels.launch import ExpandRowsConfig
from kernels.lora_expand_rows import lora_expand_rows
from kernels.meta import LoRAMeta
from tests.test_kernels_lora import DEV, check_expand, make_inputs, rand_slots, reference_pair


def run_rows(hidden, widths, ranks, slots, dtype, cfg=None, meta=None, seed=0):
    """buf from the float64 reference shrink (rows without an adapter: NaN), then the rows expand vs the reference."""
    t, n_total = len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, t, dtype, seed)
    buf, y_ref = reference_pair(inputs, slots)
    meta = (meta or LoRAMeta(max(t, 1), 8, device=DEV)).prepare(slots)
    y = y0.to(DEV).clone()
    lora_expand_rows(buf.float().to(DEV), b.to(DEV), meta, ranks_t.to(DEV), offs.to(DEV), y, config=cfg)
    check_expand(y.cpu(), y0, y_ref, slots, ranks, n_total, dtype)
    return meta


@pytest.mark.parametrize("hidden,widths,ranks,dtype", [
    (896, [896], [8, 16], torch.float32),
    (1024, [512, 128, 128], [1, 8, 16, 64, 128], torch.bfloat16),  # mixed ranks: rank 128 loops over block_r
    (3584, [440, 72], [16, 64, 8], torch.float16),  # the 2nd slice starts off a multiple of 16
    (4096, [512, 128, 128], [16, 16, 16, 16], torch.bfloat16),
])
def test_random_mappings(hidden, widths, ranks, dtype):
    run_rows(hidden, widths, ranks, rand_slots(13, len(ranks), seed=hidden), dtype)


@pytest.mark.parametrize("cfg", [ExpandRowsConfig(block_m=1, block_n=16, block_r=16),
                                 ExpandRowsConfig(block_m=8, block_n=32, block_r=32),
                                 ExpandRowsConfig(block_m=2, block_n=16, block_r=16),
                                 ExpandRowsConfig(block_m=4, block_n=32, block_r=16, late_rank=True),
                                 ExpandRowsConfig(block_m=1, block_n=16, block_r=32, late_rank=True)])
def test_tiles_cut_across_unaligned_slices_and_rows(cfg):
    # tiles end inside slices of 40, 24 and 72 columns and past the 9 rows; rank 40 > block_r 16/32 loops
    run_rows(64, [40, 24, 72], [8, 40], rand_slots(9, 2, seed=cfg.block_m), torch.float16, cfg=cfg)


@pytest.mark.parametrize("slots", [[1] * 11, [0, 0, 0, 2, 2, 2, 2, 2, 2, -1, 2, 0], [2, -1, -1, 2, 2]])
def test_programs_over_one_adapter_and_over_several(slots):
    # rows in slot order: whole programs of one adapter beside programs over two, and tails with rows past the
    # step's adapter tokens; ranks 16 and 40 (40 > block_r loops)
    run_rows(320, [96, 48], [16, 40, 40], slots, torch.bfloat16, cfg=ExpandRowsConfig(block_m=4, block_n=32))


def test_no_token_on_any_adapter_leaves_everything():
    run_rows(128, [64, 32], [8, 16], [-1] * 9, torch.float32)


def test_rank_zero_slot_leaves_its_rows():
    run_rows(192, [96], [8, 0, 4], [0, 1, 2, 1, -1, 0, 2], torch.float16)


def test_single_token():
    run_rows(896, [128, 32, 32], [128], [0], torch.float32)


def test_refilled_meta_follows_the_new_mapping():
    """One meta object refilled with a new mapping (as a CUDA-graph replay does): rows follow the new slots."""
    meta = run_rows(256, [64, 16], [16, 8, 4], [0, 1, 2, -1, 1, 0], torch.float32)
    run_rows(256, [64, 16], [16, 8, 4], [2, -1, 0, 0, 1, 2], torch.float32, meta=meta, seed=1)


@pytest.mark.parametrize("cfg", [ExpandRowsConfig(block_m=2, block_n=32, late_rank=True),
                                 ExpandRowsConfig(block_m=4, block_n=16),
                                 ExpandRowsConfig(block_m=1, block_n=64, late_rank=True),
                                 ExpandRowsConfig(block_m=4, block_n=64, num_warps=8, late_rank=True)])
def test_late_rank_keeps_the_contract(cfg):
    """Loads that do not wait for the rank still ignore B and the rank vectors past each row's rank (the reference
    buffer holds NaN there, B random values); a rank-0 slot and rows without an adapter leave y as it was."""
    run_rows(192, [96, 24], [8, 0, 4, 16], [0, 1, 2, 1, -1, 3, 0, 2, 3, -1, 3], torch.float16, cfg=cfg)
    run_rows(256, [64, 16], [16, 8, 4], rand_slots(21, 3, seed=5), torch.bfloat16, cfg=cfg)


@pytest.mark.parametrize("cfg", [ExpandRowsConfig(block_m=4, block_n=32),
                                 ExpandRowsConfig(block_m=2, block_n=16, late_rank=True)])
def test_overwrite_writes_every_row_of_the_step_and_reads_no_y(cfg):
    """overwrite=True (the fold's fresh buffer, engines/model/llama.py): y = the expand on every row of the step,
    exactly 0 on tokens without an adapter or on a rank-0 slot, whatever y held (NaN here), the columns inside the
    slices only; equal to zeroing y and adding the expand. A meta prepared for other tokens than y's rows is
    refused: those rows would take stale token indices."""
    hidden, widths, ranks = 192, [96, 24], [8, 0, 4, 16]
    slots = [0, 1, 2, 1, -1, 3, 0, 2, 3, -1, 3]
    t, n_total = len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, t, torch.float32, 3)
    buf, _ = reference_pair(inputs, slots)
    buf, b, ranks_t, offs = buf.float().to(DEV), b.to(DEV), ranks_t.to(DEV), offs.to(DEV)
    meta = LoRAMeta(16, 8, device=DEV).prepare(slots)
    want = torch.zeros(t, y0.shape[1], device=DEV)
    lora_expand_rows(buf, b, meta, ranks_t, offs, want, config=cfg)
    y = torch.full((t, y0.shape[1]), float("nan"), device=DEV)
    lora_expand_rows(buf, b, meta, ranks_t, offs, y, config=cfg, overwrite=True)
    assert torch.equal(y[:, :n_total], want[:, :n_total])
    assert y[:, n_total:].isnan().all()  # past the slices: not written
    idle = [i for i, sl in enumerate(slots) if sl < 0 or ranks[sl] == 0]
    assert idle and (y[idle, :n_total] == 0).all() and (y[:, :n_total] != 0).any()
    meta.prepare(slots[:-2])
    with pytest.raises(ValueError, match="prepared for 9 tokens"):
        lora_expand_rows(buf, b, meta, ranks_t, offs, y, config=cfg, overwrite=True)


def test_the_ops_entry_overwrites_by_rows_and_by_segments_alike():
    """kernels.ops.lora_expand(overwrite=True): by rows without reading y, by segments (and the CPU reference) by
    zeroing it first; both give the expand alone."""
    import kernels.ops as kops

    hidden, widths, ranks, slots = 128, [64, 32], [8, 16], [1, -1, 0, 1, 1, -1]
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, len(slots), torch.float32, 4)
    buf, _ = reference_pair(inputs, slots)
    buf, b, ranks_t, offs = buf.float().to(DEV), b.to(DEV), ranks_t.to(DEV), offs.to(DEV)
    meta = LoRAMeta(8, 4, device=DEV).prepare(slots)
    want = kops.lora_expand(buf, b, meta, ranks_t, offs, torch.zeros(len(slots), 96, device=DEV))
    for rows in (False, True):
        y = torch.full((len(slots), 96), 7.0, device=DEV)
        got = kops.lora_expand(buf, b, meta, ranks_t, offs, y, rows=rows, overwrite=True)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), rows
