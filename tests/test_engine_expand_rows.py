"""extra.lora_expand_rows: steps the rule picks (a token count, or auto: decode over many adapters) expand by rows
(kernels/lora_expand_rows.py) and give the tokens of the segment expand; bad values are refused."""
import math

import pytest
import torch

import kernels.ops as kops
from kernels.launch import ROWS_ANY_FILL_TOKENS, ROWS_AUTO_PER_TILE, ROWS_AUTO_TOKENS

from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import adapter_dir, serve  # noqa: F401  (a fixture)


def _rule(eng):
    return eng.runner.meta.rows_max_tokens, eng.runner.meta.rows_max_per_tile, eng.runner.meta.rows_any_fill


def test_expand_rows_takes_a_token_count_or_auto_and_refuses_nonsense(adapter_dir):  # noqa: F811
    def make(value=None):
        return create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                          extra={} if value is None else {"lora_expand_rows": value}))
    assert _rule(make()) == (ROWS_AUTO_TOKENS, ROWS_AUTO_PER_TILE, ROWS_ANY_FILL_TOKENS)  # since runs 9 and 11
    assert _rule(make(64)) == (64, math.inf, 0)
    assert _rule(make(False))[0] == 0 and _rule(make(0))[0] == 0
    assert _rule(make("auto")) == (ROWS_AUTO_TOKENS, ROWS_AUTO_PER_TILE, ROWS_ANY_FILL_TOKENS)
    for bad in (-1, "yes", 2.5, True):
        with pytest.raises(ValueError, match=r"extra.lora_expand_rows.*or auto"):
            make(bad)


def _serve_watching(eng, op: str, note):
    """serve(eng), recording note(*args) of every call of kernels.ops.<op>: (tokens, what was noted)."""
    seen, real = [], getattr(kops, op)

    def spy(*args):
        seen.append(note(*args))
        return real(*args)
    setattr(kops, op, spy)
    try:
        toks, _ = serve(eng)
    finally:
        setattr(kops, op, real)
    return toks, seen


def _serve_watching_paths(eng):
    """serve(eng), recording (tokens, by rows) of every LoRA expand."""
    return _serve_watching(eng, "lora_expand", lambda buf, b, meta, ranks, offsets, y, rows=False: (y.shape[0], rows))


def test_auto_expands_decode_over_distinct_adapters_by_rows_and_prompts_by_segments(adapter_dir):  # noqa: F811
    want, _ = serve(create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                               extra={"lora_expand_rows": 0})))
    eng = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                     extra={"lora_expand_rows": "auto", "mixed_steps": False}))
    got, seen = _serve_watching_paths(eng)
    assert got == want  # the CPU runs one reference for both paths: the choice must not change a token
    # decode steps (up to 10 tokens: 2 over each of the four adapters beside base rows) took rows; the prefill of
    # every prompt (65 tokens; 52 over the four adapters, whose runs fill 4-5 of their segment tiles) took segments
    longest = max(t for t, _ in seen)
    assert longest > 10 and not any(r for t, r in seen if t == longest)
    assert all(r for t, r in seen if t <= 10) and any(t <= 10 for t, _ in seen)
    stats = eng.stats()  # /metrics: lora_fleet_lora_steps, lora_fleet_expand_rows_steps
    calls_a_step = len(seen) // stats["lora_steps"]
    assert stats["expand_rows_steps"] == sum(r for _, r in seen) // calls_a_step
    assert 0 < stats["expand_rows_steps"] < stats["lora_steps"]


PAIR = {"lora_joint": False}  # q,k,v and o LoRA through the pair on CUDA too (the joint path does not expand)


def _gpu_by_segments(adapter_dir):  # noqa: F811
    """(the GPU engine config, the tokens it serves expanding by segments): the reference of the GPU tests."""
    gpu = dict(model="tiny", device="cuda", dtype="float32", adapters=str(adapter_dir), num_kv_blocks=512)
    plain = create_engine(EngineConfig(**gpu, extra={"lora_expand_rows": 0, **PAIR}))
    want, _ = serve(plain)
    plain.close()
    return gpu, want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels run on a GPU (the CPU runs references)")
def test_on_the_gpu_the_expand_by_rows_gives_the_tokens_of_the_segment_expand(adapter_dir):  # noqa: F811
    import kernels.lora_expand_rows as rows_mod
    gpu, want = _gpu_by_segments(adapter_dir)
    calls = []
    real = rows_mod.lora_expand_rows

    def count(*args, **kwargs):
        calls.append(args[-1].shape[0])
        return real(*args, **kwargs)
    rows_mod.lora_expand_rows = count
    try:
        eng = create_engine(EngineConfig(**gpu, extra={"lora_expand_rows": 64, "capture_graphs": False,
                                                       "warmup": False, **PAIR}))
        got, _ = serve(eng)
        eng.close()
    finally:
        rows_mod.lora_expand_rows = real
    assert got == want
    assert calls and max(calls) <= 64  # decode-sized calls took the rows expand, longer ones the segments


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs run on a GPU")
def test_on_the_gpu_auto_replays_by_rows_graphs_for_decode_over_distinct_adapters(adapter_dir):  # noqa: F811
    gpu, want = _gpu_by_segments(adapter_dir)
    eng = create_engine(EngineConfig(**gpu, extra={"lora_expand_rows": "auto"}))
    graphs = eng.runner.graphs
    at_start = set(graphs.graphs)
    assert {k for k in at_start if k[2] == (True, 0)} == {(b, True, (True, 0), None) for b in graphs.buckets
                                                          if b <= ROWS_AUTO_TOKENS}
    replayed, real = [], graphs.meta.prepare

    def spy(slots, expand_rows=None, joint=None):
        meta = real(slots, expand_rows, joint)
        replayed.append(meta.expand_rows)
        return meta
    graphs.meta.prepare = spy
    got, _ = serve(eng)
    eng.close()
    assert got == want
    assert set(graphs.graphs) == at_start  # nothing captured while serving
    assert any(replayed)  # decode steps over the four adapters replayed a by-rows graph


def test_shrink_rows_reaches_every_stack_and_keeps_the_tokens(adapter_dir):  # noqa: F811
    off = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                     extra={"lora_shrink_rows": False}))
    assert not any(s.shrink_rows for s in off.model.lora_stacks.values())
    want, _ = serve(off)
    eng = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir)))  # on by default
    assert eng.model.lora_stacks and all(s.shrink_rows for s in eng.model.lora_stacks.values())
    got, seen = _serve_watching(eng, "lora_shrink", lambda x, a, meta, scales, ranks, out, rows=False:
                                (x.shape[0], rows, meta.expand_rows))
    assert got == want
    assert all(rows == by_rows for _, rows, by_rows in seen)  # by rows exactly where the expand goes by rows
    assert any(rows for _, rows, _ in seen) and not all(rows for _, rows, _ in seen)
    with pytest.raises(ValueError, match="lora_shrink_rows"):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={"lora_shrink_rows": "often"}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels and CUDA graphs run on a GPU")
def test_on_the_gpu_the_shrink_by_rows_gives_the_tokens_of_the_segment_shrink(adapter_dir):  # noqa: F811
    gpu, want = _gpu_by_segments(adapter_dir)
    for graphs in (False, True):  # eager (its partial planes read after the side stream's join), then graphed
        eng = create_engine(EngineConfig(**gpu, extra={"lora_expand_rows": "auto", "capture_graphs": graphs,
                                                       "warmup": graphs, **PAIR}))  # the shrink by rows: the default
        got, _ = serve(eng)
        rows_steps = eng.stats()["expand_rows_steps"]
        eng.close()
        assert got == want and rows_steps > 0
