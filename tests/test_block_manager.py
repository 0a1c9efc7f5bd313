"""Block manager policy: allocation, decode growth, freeing, exhaustion (no torch)."""
import pytest

from engines.multilora.block_manager import BlockManager
from engines.multilora.sequence import Sequence


def seq(n, name="s"):
    return Sequence(name, list(range(n)))


def test_allocate_covers_every_token_and_skips_scratch_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(9)
    assert bm.can_allocate(s)
    bm.allocate(s)
    assert len(s.block_table) == 3 and 0 not in s.block_table
    assert bm.num_used == 3 and bm.num_free == 5


def test_append_takes_a_block_only_at_a_boundary():
    bm = BlockManager(num_blocks=4, block_size=4)
    s = seq(4)
    bm.allocate(s)
    assert len(s.block_table) == 1
    s.output_ids.append(7)  # 5 tokens: the 5th needs a second block
    assert bm.can_append(s)
    bm.append(s)
    assert len(s.block_table) == 2
    s.output_ids.append(8)  # 6 tokens fit in 2 blocks
    bm.append(s)
    assert len(s.block_table) == 2 and bm.num_used == 2


def test_exhaustion_and_free_returns_blocks():
    bm = BlockManager(num_blocks=2, block_size=2)
    a, b = seq(4, "a"), seq(1, "b")
    bm.allocate(a)
    assert not bm.can_allocate(b)
    with pytest.raises(RuntimeError, match="needs 1 blocks"):
        bm.allocate(b)
    a.output_ids.append(1)
    assert not bm.can_append(a)
    bm.free(a)
    assert bm.num_free == 2 and a.block_table == [] and a.num_cached == 0
    bm.allocate(b)
    assert bm.num_used == 1


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0, 16)
