"""LoRAMeta: grouping tokens by slot, refills that shrink the step, and the split-K semaphores."""
import pytest
import torch

from kernels.meta import LoRAMeta


def test_groups_tokens_by_slot_stably_and_skips_tokens_without_adapter():
    meta = LoRAMeta(8, 4).prepare([2, -1, 0, 2, 0, -1, 3])
    assert meta.segments() == [(0, 2, 0), (2, 2, 2), (4, 1, 3)]
    assert meta.token_indices[:7].tolist() == [2, 4, 0, 3, 6, 1, 5]  # then the tokens without one, in order
    assert meta.num_lora_tokens == 5 and meta.max_seg_len == 2 and int(meta.num_segments_dev) == 3
    assert meta.sorted_slot[:7].tolist() == [0, 0, 2, 2, 3, -1, -1]  # token_indices' slots, -1 past them


def test_refill_marks_the_rows_past_the_adapter_tokens():
    """The expand by rows reads sorted_slot up to the step's token count: a refill with fewer adapter tokens
    must leave -1 (no adapter) where the previous step had slots."""
    meta = LoRAMeta(8, 4).prepare([0, 1, 2, 3, 0, 1])
    meta.prepare([3, -1, -1, 3, -1, -1])
    assert meta.sorted_slot[:6].tolist() == [3, 3, -1, -1, -1, -1]
    assert meta.token_indices[:6].tolist() == [0, 3, 1, 2, 4, 5]  # every token of the step, none stale


def test_refill_with_fewer_segments_clears_the_stale_tail():
    """Kernels read every seg_len entry unmasked, so entries past num_segments must be 0 (slots -1)."""
    meta = LoRAMeta(16, 6).prepare([0, 1, 2, 3, 4, 5])
    meta.prepare([1, 1, -1])
    assert meta.seg_len.tolist() == [2, 0, 0, 0, 0, 0]
    assert meta.seg_slot.tolist() == [1, -1, -1, -1, -1, -1]
    meta.prepare([-1, -1])
    assert meta.num_segments == 0 and meta.seg_len.sum() == 0


def test_limits_fail_with_the_numbers():
    with pytest.raises(ValueError, match="3 distinct slots > max_segments=2"):
        LoRAMeta(8, 2).prepare([0, 1, 2])
    with pytest.raises(ValueError, match="9 tokens > max_tokens=8"):
        LoRAMeta(8, 2).prepare([0] * 9)


def test_counters_grow_and_keep_old_tensors():
    meta = LoRAMeta(4, 2)
    small = meta.counters(10)
    assert meta.counters(200) is small  # at least 256 are allocated
    big = meta.counters(1000)
    assert big.numel() >= 1000 and big is not small and len(meta._counters) == 2
    assert torch.equal(big, torch.zeros_like(big))


def test_the_expand_by_rows_rule_picks_decode_over_many_adapters():
    meta = LoRAMeta(64, 32)
    assert not meta.prepare([0, 1, 2]).expand_rows  # no rule set: by segments
    meta.use_expand_rows(40, 2.0)
    assert meta.prepare([0, 1, 2, -1]).expand_rows  # one token a tile
    assert meta.prepare([0, 0, 1, 1, -1]).expand_rows  # two: at the bound
    assert not meta.prepare([0, 0, 0, 1, 1, -1]).expand_rows  # 2.5
    assert not meta.prepare([0] * 17 + [1] * 2 + [-1]).expand_rows  # 19 tokens over 3 tiles (17 = 16 + 1)
    assert meta.prepare([0] * 16 + list(range(1, 17)) + [-1]).expand_rows  # 32 over 17 tiles: a full one among them
    assert not meta.prepare(list(range(8)) * 5 + [-1]).expand_rows  # 41 tokens > 40
    assert not meta.prepare([-1, -1]).expand_rows  # no adapter token
    assert meta.prepare([0, 0, 0], expand_rows=True).expand_rows  # told: the graphs key on it
    meta.use_expand_rows(40, 2.0, any_fill=6)  # steps of up to 6 tokens go by rows whatever their fill
    assert meta.prepare([0] * 6).expand_rows and not meta.prepare([0] * 7).expand_rows
    assert not meta.prepare([-1] * 6).expand_rows  # still: no adapter token, no rows
    meta.use_expand_rows(8)  # any share
    assert meta.prepare([3] * 8).expand_rows
    meta.use_expand_rows(0)
    assert not meta.prepare([0]).expand_rows
    for bad in ((-1, 2.0), (8, 0.0), (8, float("nan")), (8, 2.0, -1)):
        with pytest.raises(ValueError, match="use_expand_rows"):
            meta.use_expand_rows(*bad)
