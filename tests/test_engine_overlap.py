"""Overlapped steps (extra.overlap): step n+1 is launched before step n's tokens are read, with the tokens
carried on the device; every request gets the tokens it gets without overlap, stops where it would, and a
token sampled after a stop is dropped."""
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.registry import create_engine

ARGS = ModelArgs.from_name("tiny")
PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 9, 8, 7], [256, 40, 41, 42, 43, 44, 45, 46, 47], [256, 3]]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 3, [4, 8], ["q_proj", "v_proj", "o_proj"], root, dtype=torch.float32)
    return root


def engine(adapter_dir, overlap, **extra):
    cfg = dict(model="tiny", device="cpu", adapters=str(adapter_dir), extra={"overlap": overlap, **extra})
    for key in ("num_kv_blocks", "block_size", "max_num_seqs"):
        if key in extra:
            cfg[key] = cfg["extra"].pop(key)
    return create_engine(EngineConfig(**cfg))


def run(eng, reqs, abort_after=None):
    """Every request's streamed tokens and final output; abort_after=(request id, steps) aborts one."""
    for r in reqs:
        eng.add_request(r)
    toks, outs, steps = {}, {}, 0
    while eng.has_unfinished():
        steps += 1
        assert steps < 2000
        if abort_after and steps == abort_after[1]:
            eng.abort(abort_after[0])
        for o in eng.step():
            toks.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                outs[o.request_id] = o
    assert eng.blocks.num_used == 0 and not eng.scheduler.running
    return toks, outs


def requests(eos_free):
    """Greedy and seeded requests over the base and three adapters, with stop tokens, min_tokens, EOS."""
    adapters = [None, "adapter-0000", "adapter-0001", "adapter-0002"]
    out = []
    for i in range(12):
        p = SamplingParams(max_tokens=6 + i % 5, ignore_eos=i % 3 == 0)
        if i % 2:
            p.temperature, p.top_p, p.seed = 0.9, 0.95, 100 + i
        if i % 4 == 1:
            p.stop_token_ids = (eos_free[3],)
        if i % 6 == 5:
            p.min_tokens = 4
        out.append(Request(f"r{i}", PROMPTS[i % 4], adapters[i % 4], p))
    return out


@pytest.mark.parametrize("extra", [{}, {"mixed_steps": False}, {"num_kv_blocks": 10, "block_size": 4}],
                         ids=["mixed", "separate", "preempting"])
def test_overlap_gives_every_request_the_same_tokens(adapter_dir, extra):
    plain = engine(adapter_dir, False, **extra)
    free, _ = run(plain, [Request("f", PROMPTS[0], None, SamplingParams(max_tokens=8, ignore_eos=True))])
    eos = free["f"][2]  # a token the model emits, made EOS in both engines: requests stop early
    plain.eos_token_id = eos
    want, want_outs = run(plain, requests(free["f"]))
    over = engine(adapter_dir, True, **extra)
    over.eos_token_id = eos
    seen = []
    step = over.runner.step
    over.runner.step = lambda *a, **k: (seen.append(a[4] if len(a) > 4 else k.get("carry")), step(*a, **k))[1]
    got, got_outs = run(over, requests(free["f"]))
    assert got == want
    assert {k: (o.finish_reason, o.output_tokens) for k, o in got_outs.items()} == \
           {k: (o.finish_reason, o.output_tokens) for k, o in want_outs.items()}
    assert any(o.finish_reason == "stop" for o in got_outs.values())  # EOS / stop tokens were hit
    assert sum(c is not None for c in seen) > len(seen) // 2  # most steps took their input from the step before
    assert over.tokens_generated == plain.tokens_generated - sum(len(t) for t in free.values())
    if "num_kv_blocks" in extra:
        assert over.scheduler.num_preemptions > 0


def test_a_step_is_read_after_the_next_is_launched(adapter_dir):
    eng = engine(adapter_dir, True)
    eng.add_request(Request("a", PROMPTS[0], "adapter-0001", SamplingParams(max_tokens=5, ignore_eos=True)))
    assert eng.step() == []  # the prefill is on its way; nothing read yet
    assert eng._in_flight is not None and eng.has_unfinished()
    first = eng.step()  # launches the first decode, reads the prefill's token
    assert [o.request_id for o in first] == ["a"] and first[0].new_token_ids[0] >= 0


def test_abort_and_a_failing_row_while_steps_are_in_flight(adapter_dir):
    eng = engine(adapter_dir, True)
    ok = SamplingParams(max_tokens=20, ignore_eos=True)
    bad = SamplingParams(max_tokens=20, temperature=0.5)
    bad.seed = 2**64  # past the request checks (as test_server_poison does): no generator takes this seed
    toks, outs = run(eng, [Request("keep", PROMPTS[0], "adapter-0000", ok),
                           Request("gone", PROMPTS[1], "adapter-0001", ok),
                           Request("bad", PROMPTS[2], None, bad)], abort_after=("gone", 4))
    assert len(toks["keep"]) == 20 and outs["keep"].finish_reason == "length"
    assert "gone" not in outs and len(toks.get("gone", [])) <= 3
    assert outs["bad"].finish_reason == "error" and "sampling failed" in outs["bad"].error
    alone, _ = run(engine(adapter_dir, True), [Request("keep", PROMPTS[0], "adapter-0000", ok)])
    assert alone["keep"] == toks["keep"]


def test_merged_baseline_refuses_overlap(adapter_dir):
    with pytest.raises(ValueError, match="overlap is not supported by the merged baseline"):
        create_engine(EngineConfig(engine="merged", model="tiny", device="cpu", adapters=str(adapter_dir),
                                   extra={"overlap": True}))


def test_a_request_at_its_length_limit_is_not_run_past_it(adapter_dir):
    """max_tokens and the context limit end a request whatever its last token is: overlapped steps do not
    run it once more, so they decode exactly the rows the plain engine does."""
    reqs = lambda: [Request(f"n{i}", PROMPTS[i % 4], None, SamplingParams(max_tokens=3 + i, ignore_eos=True))
                    for i in range(5)]
    plain, over = engine(adapter_dir, False), engine(adapter_dir, True)
    want, _ = run(plain, reqs())
    got, outs = run(over, reqs())
    assert got == want and over.decode_tokens == plain.decode_tokens
    limit = over.max_model_len
    toks, outs = run(over, [Request("edge", [256] * (limit - 3), None, SamplingParams(max_tokens=50,
                                                                                      ignore_eos=True))])
    assert len(toks["edge"]) == 3 and outs["edge"].finish_reason == "length"


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="overlap on a device: CUDA only")


@needs_gpu
def test_on_the_gpu_overlapped_graph_steps_launch_without_a_host_sync(adapter_dir):
    """With graphs, mixed graphed steps and overlap, every launch (inputs, carried tokens, replay, sampling,
    the copy of the tokens) runs with CUDA's sync debug mode set to error; the tokens match the plain engine."""
    gpu = dict(device="cuda", dtype="float32", cuda_graphs=True, num_kv_blocks=512)

    def make(overlap):
        return create_engine(EngineConfig(model="tiny", adapters=str(adapter_dir), **gpu, extra={
            "overlap": overlap, "mixed_steps": True, "mixed_graphs": True}))
    reqs = lambda: [Request(f"g{i}", PROMPTS[i % 4] * 2, [None, "adapter-0000", "adapter-0001"][i % 3],
                            SamplingParams(max_tokens=4 + i % 5, ignore_eos=True, temperature=0.8 * (i % 2),
                                           seed=i if i % 2 else None)) for i in range(9)]
    plain = make(False)
    want, _ = run(plain, reqs())
    plain.close()
    over = make(True)
    launch, launches = over._launch, []

    def strict(batch):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            launches.append(len(batch.seqs))
    over._launch = strict
    got, _ = run(over, reqs())
    assert got == want and len(launches) > 5
    st = over.stats()  # reading the tokens is the one place the host blocks on the device, and it is counted
    assert 0 < st["device_wait_seconds"] <= st["step_seconds"]



def test_the_draw_follows_the_probabilities():
    """The sampler's draw (argmax of p / Exp(1), no host sync) picks each token as often as its probability."""
    from engines.multilora.sampler import _draw
    probs = torch.tensor([[0.1, 0.2, 0.0, 0.7]]).expand(40_000, 4).contiguous()
    picks = _draw(probs, torch.Generator().manual_seed(3))
    freq = torch.bincount(picks, minlength=4).double() / picks.numel()
    assert freq[2] == 0 and torch.allclose(freq, probs[0].double(), atol=0.01)
