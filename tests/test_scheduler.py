"""Scheduler policy: admission limits, cold adapters skipped, preemption, one adapter per step, mixed prefill + decode steps (no torch)."""
import subprocess
import sys

from engines.multilora.block_manager import BlockManager
from engines.multilora.policy import OneAdapterPerStep
from engines.multilora.scheduler import Scheduler, SchedulerConfig
from engines.multilora.sequence import Sequence, SeqStatus


def make(num_blocks=64, block_size=4, policy=None, **cfg):
    return Scheduler(SchedulerConfig(**cfg), BlockManager(num_blocks, block_size), policy)


def separate(**kw):
    """A scheduler whose prefill steps are steps of their own (mixed_steps off)."""
    return make(mixed_steps=False, **kw)


def ids(seqs):
    return [x.seq_id for x in seqs]


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


def test_separate_steps_prefill_first_then_decode_and_new_requests_join_next_step():
    s = separate()
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

    s = separate(max_num_batched_tokens=10)
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
    s = separate()
    s.add(seq("cold", adapter="c"))
    s.add(seq("warm", adapter="w"))
    b = s.schedule(lambda a: a != "c")
    assert [x.seq_id for x in b.seqs] == ["warm"]
    assert s.waiting_adapters() == ["c"]
    grow(b)
    b = s.schedule(always)
    assert b.is_prefill and [x.seq_id for x in b.seqs] == ["cold"]


def test_separate_steps_preempt_the_newest_sequence_when_blocks_run_out():
    s = separate(num_blocks=3, block_size=2)
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


def test_separate_steps_one_adapter_per_step_rotates_over_adapters_with_work():
    s = separate(policy=OneAdapterPerStep())
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


# ---- mixed steps (the default) ----------------------------------------------------------------------------
def test_a_mixed_step_decodes_the_running_and_prefills_new_arrivals():
    s = make()
    s.add(seq("a"))
    b = s.schedule(always)
    assert b.decode == [] and ids(b.prefill) == ["a"] and b.is_prefill
    grow(b)
    s.add(seq("b", n=6))
    b = s.schedule(always)
    assert ids(b.decode) == ["a"] and ids(b.prefill) == ["b"] and not b.is_prefill
    assert ids(b.seqs) == ["a", "b"] and b.num_tokens == 1 + 6  # decode rows first: the runner's order
    grow(b)
    b = s.schedule(always)
    assert ids(b.decode) == ["a", "b"] and b.prefill == []


def test_the_step_token_budget_counts_decodes_and_keeps_arrival_order():
    s = make(step_tokens=12)
    for i in range(3):
        s.add(seq(f"run{i}", n=2))
    grow(s.schedule(always))
    for i in range(4):
        s.add(seq(f"new{i}", n=4))
    b = s.schedule(always)  # 3 decode tokens + 4 + 4 = 11; a third prompt would make 15 > 12
    assert ids(b.decode) == ["run0", "run1", "run2"] and ids(b.prefill) == ["new0", "new1"]
    assert b.num_tokens == 11 and ids(s.waiting) == ["new2", "new3"]
    grow(b)
    b = s.schedule(always)  # 5 decode tokens + 4 = 9; + 4 more = 13 > 12
    assert len(b.decode) == 5 and ids(b.prefill) == ["new2"] and b.num_tokens <= 12


def test_the_first_prompt_of_a_step_may_exceed_the_budget_and_the_next_waits():
    s = make(step_tokens=4)
    s.add(seq("a", n=2))
    grow(s.schedule(always))
    s.add(seq("long", n=9))
    s.add(seq("short", n=1))
    b = s.schedule(always)
    assert ids(b.decode) == ["a"] and ids(b.prefill) == ["long"]  # never starved, never chunked
    assert ids(s.waiting) == ["short"]  # arrival order: not slipped in past the prompt that overflowed
    grow(b)
    b = s.schedule(always)  # 2 decodes + 1: within the budget
    assert ids(b.prefill) == ["short"]


def test_mixing_respects_max_num_seqs_max_loras_and_cold_adapters():
    s = make(max_num_seqs=3)
    s.add(seq("a"))
    s.add(seq("b"))
    grow(s.schedule(always))
    for i in range(3):
        s.add(seq(f"n{i}"))
    b = s.schedule(always)
    assert len(b.decode) == 2 and ids(b.prefill) == ["n0"]

    s = make(max_loras=2)
    s.add(seq("x0", adapter="x"))
    s.add(seq("y0", adapter="y"))
    grow(s.schedule(always))
    for name, ad in [("z0", "z"), ("cold", "c"), ("x1", "x"), ("base", None)]:
        s.add(seq(name, adapter=ad))
    b = s.schedule(lambda a: a != "c")
    assert ids(b.decode) == ["x0", "y0"] and ids(b.prefill) == ["x1", "base"]  # z would be a third adapter
    assert ids(s.waiting) == ["z0", "cold"] and s.waiting_adapters() == ["z", "c"]


def test_a_mixed_step_that_preempts_admits_nothing():
    s = make(num_blocks=3, block_size=2)
    s.add(seq("old", n=2))
    s.add(seq("new", n=2))
    grow(s.schedule(always))  # each now has 3 tokens: needs a second block; one block free
    s.add(seq("w", n=1))
    b = s.schedule(always)
    assert ids(b.decode) == ["old"] and ids(b.preempted) == ["new"] and b.prefill == []
    assert ids(s.waiting) == ["new", "w"] and s.blocks.num_free == 1 and s.num_preemptions == 1
    grow(b)
    s.remove(b.decode[0], "stop")
    b = s.schedule(always)  # the preempted one first (recomputed with its generated token), then w
    assert b.decode == [] and ids(b.prefill) == ["new", "w"] and len(b.prefill[0]) == 3


def test_mixed_steps_serve_one_adapter_per_step_under_the_merged_policy():
    s = make(policy=OneAdapterPerStep())
    for i, ad in enumerate(["x", "y", "x"]):
        s.add(seq(f"r{i}", adapter=ad))
    served = []
    for step in range(5):
        if step == 2:
            s.add(seq("late-x", adapter="x"))
            s.add(seq("late-y", adapter="y"))
        b = s.schedule(always)
        assert len({x.adapter for x in b.seqs}) == 1
        served.append((b.seqs[0].adapter, ids(b.decode), ids(b.prefill)))
        grow(b)
    assert served == [("x", [], ["r0", "r2"]), ("y", [], ["r1"]), ("x", ["r0", "r2"], ["late-x"]),
                      ("y", ["r1"], ["late-y"]), ("x", ["r0", "r2", "late-x"], [])]
