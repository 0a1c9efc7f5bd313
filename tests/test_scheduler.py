"""Scheduler policy: admission limits, cold adapters skipped, preemption, one adapter per step (no torch)."""
import subprocess
import sys

from engines.multilora.block_manager import BlockManager
from engines.multilora.policy import OneAdapterPerStep
from engines.multilora.scheduler import Scheduler, SchedulerConfig
from engines.multilora.sequence import Sequence, SeqStatus


def make(num_blocks=64, block_size=4, policy=None, **cfg):
    return Scheduler(SchedulerConfig(**cfg), BlockManager(num_blocks, block_size), policy)


def seq(name, n=4, adapter=None):
    return Sequence(name, list(range(n)), adapter)


def always(_):
    return True


def grow(batch):
    for s in batch.seqs:
        s.output_ids.append(0)


def test_policies_import_no_torch():
    code = ("import sys; import engines.multilora.scheduler, engines.multilora.block_manager, "
            "engines.multilora.adapter_lru, engines.multilora.sequence; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prefill_first_then_decode_and_new_requests_join_next_step():
    s = make()
    s.add(seq("a"))
    b = s.schedule(always)
    assert b.is_prefill and [x.seq_id for x in b.seqs] == ["a"]
    grow(b)
    s.add(seq("b"))
    b = s.schedule(always)
    assert b.is_prefill and [x.seq_id for x in b.seqs] == ["b"]
    grow(b)
    b = s.schedule(always)
    assert not b.is_prefill and [x.seq_id for x in b.seqs] == ["a", "b"]


def test_limits_on_sequences_tokens_and_distinct_adapters():
    s = make(max_num_seqs=3)
    for i in range(5):
        s.add(seq(f"r{i}"))
    assert len(s.schedule(always).seqs) == 3

    s = make(max_num_batched_tokens=10)
    for i in range(3):
        s.add(seq(f"r{i}", n=4))
    b = s.schedule(always)
    assert b.num_tokens == 8 and len(s.waiting) == 1

    s = make(max_loras=2)
    for i, ad in enumerate(["x", "y", "z", "x", None]):
        s.add(seq(f"r{i}", adapter=ad))
    b = s.schedule(always)
    assert [x.adapter for x in b.seqs] == ["x", "y", "x", None]  # z would be a third; the base takes no slot
    assert [x.seq_id for x in s.waiting] == ["r2"]


def test_cold_adapter_is_skipped_not_waited_on():
    s = make()
    s.add(seq("cold", adapter="c"))
    s.add(seq("warm", adapter="w"))
    b = s.schedule(lambda a: a != "c")
    assert [x.seq_id for x in b.seqs] == ["warm"]
    assert s.waiting_adapters() == ["c"]
    grow(b)
    b = s.schedule(always)
    assert b.is_prefill and [x.seq_id for x in b.seqs] == ["cold"]


def test_preempts_the_newest_sequence_when_blocks_run_out():
    s = make(num_blocks=3, block_size=2)
    s.add(seq("old", n=2))
    s.add(seq("new", n=2))
    b = s.schedule(always)
    assert len(b.seqs) == 2
    grow(b)  # each now has 3 tokens: needs a second block; one block free
    b = s.schedule(always)
    assert [x.seq_id for x in b.seqs] == ["old"] and [x.seq_id for x in b.preempted] == ["new"]
    new = b.preempted[0]
    assert new.status is SeqStatus.WAITING and new.block_table == [] and s.waiting[0] is new
    assert s.num_preemptions == 1
    grow(b)
    s.remove(b.seqs[0], "stop")
    b = s.schedule(always)  # the preempted one is recomputed with its generated token
    assert b.is_prefill and b.seqs == [new] and len(new) == 3


def test_a_lone_sequence_that_cannot_grow_preempts_itself():
    s = make(num_blocks=1, block_size=2)
    s.add(seq("a", n=2))
    b = s.schedule(always)
    grow(b)
    b = s.schedule(always)
    assert b.seqs == [] and [x.seq_id for x in b.preempted] == ["a"]


def test_one_adapter_per_step_rotates_over_adapters_with_work():
    s = make(policy=OneAdapterPerStep())
    for i, ad in enumerate(["x", "y", "x", None]):
        s.add(seq(f"r{i}", adapter=ad))
    served = []
    for _ in range(6):
        b = s.schedule(always)
        assert len({x.adapter for x in b.seqs}) == 1
        served.append((b.seqs[0].adapter, b.is_prefill, len(b.seqs)))
        grow(b)
    assert served[:3] == [(None, True, 1), ("x", True, 2), ("y", True, 1)]
    assert served[3:] == [(None, False, 1), ("x", False, 2), ("y", False, 1)]


def test_remove_frees_blocks_and_find():
    s = make(num_blocks=4, block_size=4)
    s.add(seq("a", n=8))
    s.schedule(always)
    assert s.blocks.num_used == 2 and s.find("a") is not None
    s.remove(s.find("a"), "abort")
    assert s.blocks.num_used == 0 and not s.has_unfinished() and s.find("a") is None
