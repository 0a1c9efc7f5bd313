"""kernels/lora_prefetch.py: the step's adapter slots' whole A and B blocks are read (and nothing is written); slots
outside the step are not. The kernel's only store fires when a program's sum equals a sentinel, which lets the test
see which blocks a program read."""
import pytest
import torch

from kernels.lora_prefetch import SENTINEL, lora_prefetch
from kernels.meta import LoRAMeta

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def blocks(slots=4, s=3, r=16, hidden=4096 + 64, n=6144 + 32):
    """A and B in float32 (the sentinel is exact there), zeros: a sum is the sentinel only where it was planted."""
    return (torch.zeros(slots, s, r, hidden, device=DEV), torch.zeros(slots, n, r, device=DEV))


@pytest.mark.parametrize("where", ["a_last", "b_first"])
def test_the_step_slots_blocks_are_read_to_their_ends_and_no_other(where):
    a, b = blocks()
    meta = LoRAMeta(8, 8, DEV).prepare([2, 0, -1, 2])  # segments: slots 0 and 2; the rest of the 8 are -1
    seg_of = {int(s): i for i, s in enumerate(meta.seg_slot.tolist()) if s >= 0}
    assert set(seg_of) == {0, 2}
    target = a[2].view(-1) if where == "a_last" else b[2].view(-1)
    target[-1 if where == "a_last" else 0] = SENTINEL  # the last element of A's block, the first of B's
    a[1].view(-1)[5] = SENTINEL  # slot 1 is in no segment: never read
    b[3].view(-1)[-1] = SENTINEL
    sink = torch.full((8,), 7.0, device=DEV)
    lora_prefetch(a, b, meta, 4, sink)
    want = torch.full((8,), 7.0)
    want[seg_of[2]] = SENTINEL
    assert torch.equal(sink.cpu(), want)  # only the program over slot 2's block that holds the sentinel stored


def test_nothing_is_written_for_real_weights_and_bad_arguments_are_refused():
    a, b = blocks(hidden=64, n=96)
    a.normal_()
    b.normal_()
    meta = LoRAMeta(8, 8, DEV).prepare([0, 1, 2, 3])
    sink = torch.full((8,), 7.0, device=DEV)
    for eviction in ("evict_last", "evict_normal", "evict_first"):
        lora_prefetch(a, b, meta, 4, sink, eviction)
    assert torch.equal(sink.cpu(), torch.full((8,), 7.0))
    with pytest.raises(ValueError, match="eviction 'evict_sometimes'"):
        lora_prefetch(a, b, meta, 4, sink, "evict_sometimes")
    with pytest.raises(ValueError, match="at least 4 elements"):
        lora_prefetch(a, b, meta, 4, sink[:2])
    with pytest.raises(ValueError, match="contiguous"):
        lora_prefetch(a.transpose(2, 3), b, meta, 4, sink)
