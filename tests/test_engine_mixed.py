"""Mixed prefill + decode steps: the greedy tokens of separate prefill steps, fewer steps, stats, merged policy."""
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.registry import create_engine

ARGS = ModelArgs.from_name("tiny")
NAMES = [f"adapter-{i:04d}" for i in range(12)] + [None]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 12, [2, 4, 8, 16], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
                  root, dtype=torch.float32)
    return root


def requests(n=26):
    """Prompts of 1 to 40 tokens over 12 adapters and the base, outputs of 3 to 9 tokens."""
    g = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, 41, (n,), generator=g).tolist()
    return [Request(f"r{i}", torch.randint(0, 256, (lengths[i],), generator=g).tolist(), NAMES[i % len(NAMES)],
                    SamplingParams(max_tokens=3 + i % 7, ignore_eos=True)) for i in range(n)]


def serve(eng, arrivals):
    """Run to completion with arrivals {step: [Request]}; returns id -> tokens and (decode, prefill) per step."""
    shapes = []
    step = eng.runner.step

    def record(decode, prefill, *args):
        shapes.append((len(decode), len(prefill)))
        return step(decode, prefill, *args)
    eng.runner.step = record
    arrivals, toks, n = dict(arrivals), {}, 0
    while eng.has_unfinished() or arrivals:
        for req in arrivals.pop(n, []):
            eng.add_request(req)
        for out in eng.step():
            toks.setdefault(out.request_id, []).extend(out.new_token_ids)
        n += 1
        assert n < 3000, "engine did not finish within the step bound"
    return toks, shapes


def staggered():
    """Three requests every second step."""
    reqs = requests()
    return {i // 3 * 2: reqs[i:i + 3] for i in range(0, len(reqs), 3)}


def engine(adapter_dir, engine_name="multilora", **extra_and_cfg):
    extra = {k: extra_and_cfg.pop(k) for k in ("mixed_steps", "step_tokens", "mixed_graphs") if k in extra_and_cfg}
    extra_and_cfg.setdefault("device", "cpu")
    return create_engine(EngineConfig(engine=engine_name, model="tiny", adapters=str(adapter_dir), extra=extra,
                                      **extra_and_cfg))


@pytest.fixture(scope="module")
def separate(adapter_dir):
    return serve(engine(adapter_dir, mixed_steps=False), staggered())


def test_mixed_steps_give_the_tokens_of_separate_steps_without_stalling_decodes(adapter_dir, separate):
    toks, shapes = serve(engine(adapter_dir), staggered())
    ref, ref_shapes = separate
    assert toks == ref and len(toks) == 26
    assert all(d == 0 or p == 0 for d, p in ref_shapes)  # separate: never both in one step
    assert sum(1 for d, p in ref_shapes if p) == 9  # a prefill step per arrival group, the running ones wait
    # mixed: only the first group is prefilled alone (nothing runs yet); the 8 later ones ride with decodes
    assert [p for d, p in shapes if p and not d] == [3] and sum(1 for d, p in shapes if d and p) == 8


def test_a_small_budget_and_preemption_keep_the_tokens(adapter_dir, separate):
    eng = engine(adapter_dir, step_tokens=24, num_kv_blocks=12, block_size=4)
    toks, shapes = serve(eng, staggered())
    assert toks == separate[0]
    assert eng.stats()["preemptions"] > 0 and any(d and p for d, p in shapes)


def test_prompts_as_rows_give_the_same_tokens_in_one_kind_of_forward_pass(adapter_dir, separate):
    eng = engine(adapter_dir, mixed_graphs=True, step_tokens=24, num_kv_blocks=12, block_size=4)
    forwards = []
    rows, varlen = eng.runner._rows, eng.runner._varlen
    eng.runner._rows = lambda *a: forwards.append("rows") or rows(*a)
    eng.runner._varlen = lambda *a: forwards.append("varlen") or varlen(*a)
    toks, shapes = serve(eng, staggered())
    assert toks == separate[0] and eng.stats()["preemptions"] > 0 and any(d and p for d, p in shapes)
    assert forwards == ["rows"] * len(shapes)  # every step fits max_num_seqs + 256 rows: graphs on CUDA


def test_stats_report_the_batch_and_the_decode_batch(adapter_dir):
    eng = engine(adapter_dir)
    reqs = requests(3)
    eng.add_request(reqs[0])
    eng.step()
    eng.add_request(reqs[1])
    eng.add_request(reqs[2])
    eng.step()
    st = eng.stats()
    assert st["batch_size"] == 3 and st["decode_batch_size"] == 1 and st["decode_tokens"] == 1
    eng.step()
    st = eng.stats()
    assert st["batch_size"] == st["decode_batch_size"] == 3 and st["decode_tokens"] == 4 and st["steps"] == 3


def test_merged_mixed_steps_keep_the_tokens_and_one_adapter_per_step(adapter_dir, separate):
    eng = engine(adapter_dir, "merged", merged_copies=3)
    adapter_of = {r.request_id: r.adapter for r in requests()}
    seen = []
    step = eng.runner.step

    def record(decode, prefill, *args):
        seen.append({adapter_of[s.seq_id] for s in decode + prefill})
        return step(decode, prefill, *args)
    eng.runner.step = record
    toks, shapes = serve(eng, staggered())
    assert toks == separate[0] and any(d and p for d, p in shapes)
    assert len(seen) == len(shapes) and all(len(a) == 1 for a in seen)  # one weight copy per step


@pytest.mark.parametrize("key, bad", [("step_tokens", 0), ("step_tokens", -3), ("step_tokens", "64"),
                                      ("step_tokens", True), ("step_tokens", 1.5), ("mixed_steps", "false"),
                                      ("mixed_graphs", 1)])
def test_bad_extras_are_refused(key, bad):
    with pytest.raises(ValueError, match=f"extra.{key}"):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={key: bad}))


GPU = dict(device="cuda", dtype="float32", num_kv_blocks=512)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA path (graphs, fused ops, LoRA "
                                                                    "side stream) runs on a GPU only")


def serve_counting_replays(eng):
    """serve() over the staggered stream, also counting the steps that replayed a CUDA graph."""
    replays = []
    run = eng.runner.graphs.run

    def count(*args):
        replays.append(args[0].shape[0])
        return run(*args)
    eng.runner.graphs.run = count
    return (*serve(eng, staggered()), replays)


@needs_gpu
def test_on_the_gpu_mixed_eager_steps_and_graph_decodes_give_the_tokens_of_separate_steps(adapter_dir):
    ref, _ = serve(engine(adapter_dir, mixed_steps=False, **GPU), staggered())
    toks, shapes, replays = serve_counting_replays(engine(adapter_dir, mixed_steps=True, mixed_graphs=False, **GPU))
    # adapter copies are asynchronous on CUDA: a prompt whose adapter is still on its way waits a step, so the
    # steps' shapes (8 mixed steps on the CPU) depend on the copies' timing; the tokens do not
    assert toks == ref and any(d and p for d, p in shapes)
    assert len(replays) == sum(1 for d, p in shapes if d and not p)  # decode-only steps replay graphs


@needs_gpu
def test_on_the_gpu_prompts_as_rows_replay_graphs_for_every_step(adapter_dir):
    ref, _ = serve(engine(adapter_dir, mixed_steps=False, **GPU), staggered())
    toks, shapes, replays = serve_counting_replays(engine(adapter_dir, mixed_steps=True, mixed_graphs=True, **GPU))
    assert toks == ref and any(d and p for d, p in shapes) and len(replays) == len(shapes)


def test_host_rows_lays_out_decode_tokens_then_each_prompt_token_as_a_row():
    from engines.profile import _fake_seqs
    eng = create_engine(EngineConfig(model="tiny", device="cpu"))
    decode = _fake_seqs(eng, 2, 20, "d")  # 20 tokens: two blocks of 16
    prompt = _fake_seqs(eng, 1, 3, "p")
    h = eng.runner.host_rows(decode, prompt, [3], [5, -1, 7])
    bs = eng.config.block_size
    assert h.ids.tolist() == [decode[0].last_token, decode[1].last_token] + prompt[0].tokens
    assert h.pos.tolist() == [19, 19, 0, 1, 2]
    assert h.ctx.tolist() == [20, 20, 1, 2, 3]  # a prompt token attends over its prefix and itself
    table = prompt[0].block_table
    assert h.smap.tolist() == [s.block_table[1] * bs + 3 for s in decode] + [table[0] * bs + p for p in range(3)]
    assert h.tables.shape == (5, 2) and h.tables.dtype == torch.int32
    assert h.tables[:2].tolist() == [s.block_table for s in decode]
    assert h.tables[2:].tolist() == [table + [0]] * 3  # padded with the scratch block 0
    assert h.slots == [5, -1, 7, 7, 7]
    for s in decode + prompt:
        eng.blocks.free(s)
