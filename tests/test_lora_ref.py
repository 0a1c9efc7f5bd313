"""The CPU LoRA shrink/expand (kernels.reference, batched over padded pieces) against the loop over segments."""
import pytest
import torch

from kernels.meta import LoRAMeta
from kernels.reference import lora_expand_ref, lora_shrink_ref


def loop_shrink(x, a, meta, scales, ranks, out):
    """The definition, one segment at a time."""
    for start, length, slot in meta.segments():
        r = int(ranks[slot])
        idx = meta.token_indices[start:start + length].long()
        out[:, idx, :r] = (float(scales[slot]) * torch.einsum("nh,srh->snr", x[idx].double(),
                                                               a[slot, :, :r].double())).to(out.dtype)
    return out


def loop_expand(buf, b, meta, ranks, offs, y):
    offs = offs.tolist()
    for start, length, slot in meta.segments():
        r = int(ranks[slot])
        idx = meta.token_indices[start:start + length].long()
        for i in range(len(offs) - 1):
            y[idx, offs[i]:offs[i + 1]] += (buf[i, idx, :r].double() @ b[slot, offs[i]:offs[i + 1], :r].double().T
                                            ).to(y.dtype)
    return y


def case(slots, ranks, widths=(24, 8, 8), hidden=20, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_slots, r_max, t = len(ranks), max(max(ranks), 1) + 2, len(slots)  # stale values past every rank
    x = torch.randn(t, hidden, generator=g).to(dtype)
    a = torch.randn(n_slots, len(widths), r_max, hidden, generator=g).to(dtype)
    b = torch.randn(n_slots, sum(widths), r_max, generator=g).to(dtype)
    scales = torch.rand(n_slots, generator=g).to(dtype) + 0.5
    offs = torch.tensor([0, *torch.tensor(widths).cumsum(0).tolist()], dtype=torch.int32)
    y0 = torch.randn(t, sum(widths) + 3, generator=g).to(dtype)  # 3 columns past N_total
    meta = LoRAMeta(max(t, 1), max(n_slots, 1)).prepare(slots)
    return x, a, b, scales, torch.tensor(ranks, dtype=torch.int32), offs, y0, meta


LAYOUTS = {
    "random": ([3, 0, -1, 1, 1, 2, 0, 3, 3, 3, -1, 2, 0, 1, 3, 3, 2], [8, 4, 16, 2]),
    "one long segment, short ones": ([0] * 40 + [1, 2, 3, -1, 2], [4, 8, 2, 6]),
    "rank 0 slot and no-adapter rows": ([0, 1, 1, -1, 0, 2, -1], [0, 4, 3]),
    "every slot of rank 0": ([0, 1, 0], [0, 0]),
    "no adapter at all": ([-1, -1, -1], [4]),
    "one token": ([1], [2, 5]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_batched_equals_the_loop_and_writes_only_what_the_loop_writes(name):
    slots, ranks = LAYOUTS[name]
    x, a, b, scales, ranks_t, offs, y0, meta = case(slots, ranks)
    s, t, r_max = a.shape[1], len(slots), a.shape[2]
    buf = lora_shrink_ref(x, a, meta, scales, ranks_t, torch.full((s, t, r_max), float("nan"), dtype=torch.float64))
    want = loop_shrink(x, a, meta, scales, ranks_t, torch.full((s, t, r_max), float("nan"), dtype=torch.float64))
    assert torch.equal(buf.isnan(), want.isnan()), "shrink wrote outside (or missed) its rows and ranks"
    torch.testing.assert_close(buf.nan_to_num(), want.nan_to_num(), rtol=1e-12, atol=1e-12)
    y = lora_expand_ref(want.clone(), b, meta, ranks_t, offs, y0.clone())  # NaN past the ranks: must not count
    torch.testing.assert_close(y, loop_expand(want, b, meta, ranks_t, offs, y0.clone()), rtol=1e-12, atol=1e-12)
    untouched = [i for i, sl in enumerate(slots) if sl < 0 or ranks[sl] == 0]
    assert torch.equal(y[untouched], y0[untouched]) and torch.equal(y[:, -3:], y0[:, -3:])


def test_float32_accumulates_like_the_float64_loop():
    slots, ranks = LAYOUTS["random"]
    x, a, b, scales, ranks_t, offs, y0, meta = case(slots, ranks, dtype=torch.float32)
    s, t, r_max = a.shape[1], len(slots), a.shape[2]
    buf = lora_shrink_ref(x, a, meta, scales.float(), ranks_t, torch.zeros(s, t, r_max))
    want = loop_shrink(x, a, meta, scales, ranks_t, torch.zeros(s, t, r_max, dtype=torch.float64))
    torch.testing.assert_close(buf.double(), want, rtol=1e-5, atol=1e-5)
    y = lora_expand_ref(buf, b, meta, ranks_t, offs, y0.clone())
    torch.testing.assert_close(y.double(), loop_expand(want, b, meta, ranks_t, offs, y0.double()), rtol=1e-5,
                               atol=1e-5)
