"""The pair by rows in one launch (kernels.lora_rows_pair) against the shrink by rows and the expand by rows launched
in turn, which it must equal bit for bit (same tiles, same order of sums), and against the float64 reference; its
counters are back to 0 after every launch (CPU: Triton's interpreter; GPU: compiled)."""
import pytest
import torch

from kernels import ops as kops
from kernels.launch import ExpandRowsConfig, RowsPairConfig, ShrinkRowsConfig, step_down
from kernels.lora_expand_rows import lora_expand_rows
from kernels.lora_rows_pair import lora_rows_pair
from kernels.lora_shrink_rows import lora_shrink_rows
from kernels.meta import LoRAMeta
from tests.test_kernels_lora import DEV, check_expand, make_inputs, rand_slots, reference_pair


def run_pair(hidden, widths, ranks, slots, dtype, cfg=None, overwrite=False, seed=0, launches=1):
    """The one-launch pair `launches` times on fresh copies of y0, and the two kernels in turn with the same configs;
    returns (y of the one launch, y of the two, y0, the reference y, the meta)."""
    s, r_max, t, n_total = len(widths), max(max(ranks), 1), len(slots), sum(widths)
    x, a, b, scales, ranks_t, offs, y0 = inputs = make_inputs(hidden, widths, ranks, t, dtype, seed)
    _, y_ref = reference_pair(inputs, slots)
    x, a, b, scales, ranks_t, offs = (v.to(DEV) for v in (x, a, b, scales, ranks_t, offs))
    meta = LoRAMeta(max(t, 1), 8, device=DEV).prepare(slots)
    ys = []
    for _ in range(launches):  # a second launch finds the counters at 0 again
        y = y0.to(DEV).clone()
        buf = torch.full((s, t, r_max), float("nan"), dtype=torch.float32, device=DEV)
        lora_rows_pair(x, a, b, meta, scales, ranks_t, offs, buf, y, config=cfg, overwrite=overwrite)
        ys.append(y.cpu())
        assert not meta.counters(1, owner="pair").any(), "the launch left a count behind"
    assert all(torch.equal(ys[0], y) for y in ys[1:])
    two = y0.to(DEV).clone()
    buf = torch.full((s, t, r_max), float("nan"), dtype=torch.float32, device=DEV)
    planes = lora_shrink_rows(x, a, meta, scales, ranks_t, buf, config=cfg.shrink if cfg else None)
    lora_expand_rows(planes, b, meta, ranks_t, offs, two, config=cfg.expand if cfg else None, overwrite=overwrite)
    return ys[0], two.cpu(), y0, y_ref, meta


@pytest.mark.parametrize("hidden,widths,ranks,dtype", [
    (896, [896], [8, 16], torch.float32),  # a hidden size that is not a power of two
    (1024, [512, 128, 128], [1, 8, 16, 64], torch.bfloat16),  # mixed ranks over three slices
    (384, [440, 72], [16, 64, 8], torch.float16),
])
def test_random_mappings_equal_the_two_launches_and_the_reference(hidden, widths, ranks, dtype):
    slots = rand_slots(11, len(ranks), seed=hidden)
    got, two, y0, y_ref, _ = run_pair(hidden, widths, ranks, slots, dtype, launches=2)
    assert torch.equal(got, two)
    check_expand(got, y0, y_ref, slots, ranks, sum(widths), dtype)


@pytest.mark.parametrize("shrink,expand", [
    (ShrinkRowsConfig(block_m=1, block_k=64, split_k=1), ExpandRowsConfig(block_m=4, block_n=32)),  # buf itself
    (ShrinkRowsConfig(block_m=4, block_k=32, split_k=3), ExpandRowsConfig(block_m=1, block_n=64)),  # a shrink tile
    # counts into four expand blocks; uneven shares (96, 96, 32 of 224)
    (ShrinkRowsConfig(block_m=2, block_k=64, split_k=16), ExpandRowsConfig(block_m=8, block_n=16, late_rank=True)),
    (ShrinkRowsConfig(block_m=2, block_k=32, split_k=2), ExpandRowsConfig(block_m=2, block_n=32)),  # blocks alike
])
def test_row_blocks_of_either_size_count_and_wait_right(shrink, expand):
    hidden = 256 if shrink.split_k != 3 else 224
    slots = [0, 1, 2, -1, 1, 0, 2, 2, 2, -1, 1]  # the last blocks are partial
    for overwrite in (False, True):
        got, two, y0, y_ref, _ = run_pair(hidden, [48, 16], [16, 8, 4], slots, torch.float32,
                                          cfg=RowsPairConfig(shrink, expand), overwrite=overwrite, launches=2)
        assert torch.equal(got, two)
        if overwrite:  # y = the update: 0 on the rows without an adapter, the columns past N_total untouched
            want = y_ref - y0.double()
            want[:, 64:] = y0[:, 64:].double()
            assert torch.equal(got[[3, 9]][:, :64], torch.zeros(2, 64))
            assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)
        else:
            check_expand(got, y0, y_ref, slots, [16, 8, 4], 64, torch.float32)


def test_rank_zero_slot_and_no_adapter_tokens():
    got, two, y0, y_ref, _ = run_pair(128, [64, 32], [8, 0], [1, 0, 1, -1, 0], torch.bfloat16)
    assert torch.equal(got, two)
    check_expand(got, y0, y_ref, [1, 0, 1, -1, 0], [8, 0], 96, torch.bfloat16)
    got, _, y0, _, _ = run_pair(128, [64, 32], [8, 16], [-1] * 4, torch.float32)
    assert torch.equal(got, y0)


def test_the_dispatch_runs_the_references_off_cuda_and_the_kernel_on_it():
    slots = [2, 0, -1, 1, 1]
    x, a, b, scales, ranks, offs, y0 = inputs = make_inputs(192, [64, 32, 32], [16, 16, 8], 5, torch.float32, 3)
    _, y_ref = reference_pair(inputs, slots)
    x, a, b, scales, ranks, offs = (v.to(DEV) for v in (x, a, b, scales, ranks, offs))
    meta = LoRAMeta(5, 4, device=DEV).prepare(slots)
    buf = torch.zeros(3, 5, 16, dtype=torch.float32, device=DEV)
    y = torch.full((5, 128), 7.0, device=DEV)  # overwritten: nothing of the 7s is left, 0 on the token without one
    kops.lora_rows_pair(x, a, b, meta, scales, ranks, offs, buf, y, overwrite=True)
    want = (y_ref - y0.double())[:, :128]
    assert torch.allclose(y.cpu().double(), want, rtol=1e-4, atol=1e-6) and not y[2].any()


def test_bad_inputs_name_the_field_and_configs_step_down():
    x, a, b, scales, ranks, offs, y0 = make_inputs(64, [32], [8], 3, torch.float32, 0)
    meta = LoRAMeta(3, 4).prepare([0, 0, 0])
    buf = torch.zeros(1, 3, 8)
    with pytest.raises(ValueError, match="x has 3 rows but y 2"):
        lora_rows_pair(x, a, b, meta, scales, ranks, offs, buf, y0[:2].clone())
    with pytest.raises(ValueError, match="lora_shrink: out must be float32"):
        lora_rows_pair(x, a, b, meta, scales, ranks, offs, buf.double(), y0.clone())
    with pytest.raises(ValueError, match="prepared for 2 tokens"):
        lora_rows_pair(x, a, b, LoRAMeta(3, 4).prepare([0, 0]), scales, ranks, offs, buf, y0.clone(), overwrite=True)
    cfg = RowsPairConfig(ShrinkRowsConfig(block_m=2, block_k=16), ExpandRowsConfig(block_m=2, block_n=16))
    assert step_down(cfg) == RowsPairConfig(ShrinkRowsConfig(block_m=1, block_k=16), cfg.expand)
    last = RowsPairConfig(ShrinkRowsConfig(block_m=1, block_k=16), ExpandRowsConfig(block_m=1, block_n=16))
    assert step_down(last) is None
