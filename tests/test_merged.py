"""MergedEngine: the same greedy tokens as multilora, one adapter per step, copies swapped and timed."""
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.merged import MergedEngine
from engines.model.config import ModelArgs
from engines.registry import create_engine, engine_class

ARGS = ModelArgs.from_name("tiny")
NAMES = [f"adapter-{i:04d}" for i in range(5)] + [None]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 5, [4, 8, 16], ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], root, dtype=torch.float32)
    return root


def requests():
    g = torch.Generator().manual_seed(3)
    return [Request(f"r{i}", torch.randint(0, 256, (4 + 2 * i,), generator=g).tolist(), NAMES[i % 6],
                    SamplingParams(max_tokens=6, ignore_eos=True)) for i in range(12)]


def drain(eng, reqs, watch=None):
    for r in reqs:
        eng.add_request(r)
    toks = {}
    for _ in range(2000):
        if not eng.has_unfinished():
            break
        outs = eng.step()
        if watch is not None and outs:
            watch(outs)
        for o in outs:
            toks.setdefault(o.request_id, []).extend(o.new_token_ids)
    assert not eng.has_unfinished()
    return toks


def test_merged_matches_multilora_and_swaps(adapter_dir):
    cfg = dict(model="tiny", device="cpu", adapters=str(adapter_dir))
    ref = drain(create_engine(EngineConfig(engine="multilora", **cfg)), requests())
    eng = create_engine(EngineConfig(engine="merged", merged_copies=2, **cfg))
    assert engine_class("merged") is MergedEngine and isinstance(eng, MergedEngine)
    adapter_of = {r.request_id: r.adapter for r in requests()}
    per_step = []
    got = drain(eng, requests(), watch=lambda outs: per_step.append({adapter_of[o.request_id] for o in outs}))
    assert got == ref
    assert all(len(s) == 1 for s in per_step)  # every step served one weight copy
    st = eng.stats()
    assert st["merged_copies"] == 2 and st["adapters_resident"] <= 2
    assert st["merged_swaps"] >= 5 and st["adapter_evictions"] >= 3 and st["merged_swap_seconds"] > 0


def test_merged_copies_fall_back_to_base_weights(adapter_dir):
    eng = create_engine(EngineConfig(engine="merged", model="tiny", device="cpu", adapters=str(adapter_dir),
                                     merged_copies=1))
    base_req = [Request("b", [5, 6, 7], None, SamplingParams(max_tokens=5, ignore_eos=True))]
    before = drain(eng, base_req)
    drain(eng, [Request("a", [5, 6, 7], "adapter-0002", SamplingParams(max_tokens=5, ignore_eos=True))])
    after = drain(eng, base_req)
    assert before == after  # serving an adapter left the base weights untouched
    with pytest.raises(ValueError, match="merged_copies"):
        create_engine(EngineConfig(engine="merged", model="tiny", device="cpu", merged_copies=0))
