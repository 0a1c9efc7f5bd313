"""PeftEngine (transformers + peft): same greedy tokens as multilora and merged, one adapter per batch, adapters at run time."""
from __future__ import annotations

import json
import shutil

import peft
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import AdapterFileError, AdapterNotFoundError, Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.peft_engine import PeftEngine
from engines.registry import create_engine, engine_class

PROMPTS = [[256, 5, 17, 99, 300, 42, 7, 128], [256, 1, 2, 3], [256] + list(range(50, 150, 7))]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft-adapters")
    make_adapters(ModelArgs.from_name("tiny"), 3, [4, 8, 16], ["q_proj", "v_proj", "o_proj", "down_proj"], root)
    return root


@pytest.fixture(scope="module")
def peft_engine(adapter_dir):
    engine = create_engine(EngineConfig(engine="peft", model="tiny", adapters=str(adapter_dir), device="cpu"))
    yield engine
    engine.close()


def _requests(tag: str, max_tokens: int = 10) -> list[Request]:
    adapters = [None, "adapter-0000", "adapter-0001", "adapter-0002"]
    return [Request(f"{tag}{i}-{j}", list(p), a, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
            for i, p in enumerate(PROMPTS) for j, a in enumerate(adapters)]


def _drain(engine, requests, late=(), late_after_steps=2):
    """Run to completion; `late` requests arrive after a few steps. Returns tokens and each step's adapters."""
    for r in requests:
        engine.add_request(r)
    adapter_of = {r.request_id: r.adapter for r in list(requests) + list(late)}
    tokens: dict[str, list[int]] = {}
    step_adapters = []
    steps = 0
    while engine.has_unfinished():
        outs = engine.step()
        steps += 1
        if steps == late_after_steps:
            for r in late:
                engine.add_request(r)
        step_adapters.append({adapter_of[o.request_id] for o in outs})
        for o in outs:
            tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
        assert steps < 10_000
    return tokens, step_adapters


def test_registered_as_peft_and_built_from_the_shared_weights(peft_engine):
    assert engine_class("peft") is PeftEngine
    assert isinstance(peft_engine.peft, peft.PeftModel)
    from engines.model.weights import random_state_dict

    expected = random_state_dict(ModelArgs.from_name("tiny"), seed=0)["model.layers.1.mlp.down_proj.weight"]
    got = peft_engine.model.model.layers[1].mlp.down_proj.base_layer.weight
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_greedy_tokens_equal_multilora_and_merged(peft_engine, adapter_dir):
    tokens_peft, steps = _drain(peft_engine, _requests("p"))
    assert all(len(s) <= 1 for s in steps)  # every step serves one adapter (or the base) only
    for name in ("multilora", "merged"):
        other = create_engine(EngineConfig(engine=name, model="tiny", adapters=str(adapter_dir), device="cpu"))
        tokens_other, _ = _drain(other, _requests("p"))
        other.close()
        assert tokens_peft == tokens_other, name
    for j in (1, 2, 3):  # each adapter changes the output of some prompt
        assert any(tokens_peft[f"p{i}-{j}"] != tokens_peft[f"p{i}-0"] for i in range(len(PROMPTS))), j


def test_late_requests_wait_for_their_group_and_get_the_same_tokens(peft_engine):
    alone = {r.request_id: _drain(peft_engine, [r])[0][r.request_id] for r in _requests("a", 6)}
    early, late = _requests("a", 6)[:5], _requests("a", 6)[5:]
    together, steps = _drain(peft_engine, early, late=late)
    assert together == alone
    assert all(len(s) <= 1 for s in steps)


def test_abort_mid_group_frees_it(peft_engine):
    reqs = [r for r in _requests("x", 30) if r.adapter is None][:2]  # two base-model requests: one group
    for r in reqs:
        peft_engine.add_request(r)
    peft_engine.step()
    assert peft_engine.stats()["running"] == 2
    peft_engine.abort(reqs[0].request_id)
    outs = peft_engine.step()
    assert {o.request_id for o in outs} == {reqs[1].request_id}
    peft_engine.abort(reqs[1].request_id)
    assert not peft_engine.has_unfinished() and peft_engine.stats()["kv_tokens"] == 0


def test_seeded_sampling_repeats_and_min_tokens_hold(peft_engine):
    def sample(tag):
        params = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=123, min_tokens=8)
        return _drain(peft_engine, [Request(tag, list(PROMPTS[0]), "adapter-0001", params)])[0][tag]

    first, second = sample("s1"), sample("s2")
    assert first == second and len(first) == 8


def test_request_errors_name_the_cause(peft_engine):
    with pytest.raises(AdapterNotFoundError, match="nope"):
        peft_engine.add_request(Request("e1", [1, 2], "nope"))
    with pytest.raises(ValueError, match="outside"):
        peft_engine.add_request(Request("e2", [1, 99999]))
    with pytest.raises(ValueError, match="at most"):
        peft_engine.add_request(Request("e3", [1] * (peft_engine.max_model_len + 1)))
    with pytest.raises(ValueError, match="empty"):
        peft_engine.add_request(Request("e4", []))
    assert not peft_engine.has_unfinished()


def test_register_and_unregister_at_run_time(peft_engine, adapter_dir, tmp_path):
    shutil.copytree(adapter_dir / "adapter-0002", tmp_path / "copy")
    peft_engine.register_adapter("runtime.copy", str(tmp_path / "copy"))  # '.' is fine in our names
    req = Request("r1", list(PROMPTS[1]), "runtime.copy", SamplingParams(max_tokens=5, ignore_eos=True))
    ref = Request("r2", list(PROMPTS[1]), "adapter-0002", SamplingParams(max_tokens=5, ignore_eos=True))
    out, _ = _drain(peft_engine, [req, ref])
    assert out["r1"] == out["r2"]  # the same files give the same tokens
    peft_engine.add_request(Request("r3", list(PROMPTS[1]), "runtime.copy", SamplingParams(max_tokens=5)))
    peft_engine.unregister_adapter("runtime.copy")
    failed = peft_engine.step()
    assert failed[0].finish_reason == "error" and "unregistered" in failed[0].error
    assert "runtime.copy" not in peft_engine.adapters()
    with pytest.raises(AdapterNotFoundError):
        peft_engine.unregister_adapter("runtime.copy")


def test_broken_adapter_folder_is_refused_with_its_path(peft_engine, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(AdapterFileError, match="bad"):
        peft_engine.register_adapter("bad", str(tmp_path / "bad"))
    assert "bad" not in peft_engine.adapters()


def test_unknown_extra_key_is_refused():
    with pytest.raises(ValueError, match="unknown extra key"):
        PeftEngine(EngineConfig(engine="peft", model="tiny", device="cpu", extra={"turbo": True}))


def test_runner_weights_load_into_the_hf_model_as_built_by_the_multilora_model():
    """The CUDA path (weights drawn by build_model on the device) exercised on the CPU: same names, same values."""
    from engines.model.weights import random_state_dict
    from engines.peft_engine import _build_hf_model, runner_weights

    args = ModelArgs.from_name("tiny")
    state = runner_weights(args, 5, torch.device("cpu"), torch.float32)
    model = _build_hf_model(args, state, torch.device("cpu"), torch.float32, "sdpa")
    expected = random_state_dict(args, seed=5)
    got = model.state_dict()
    assert set(expected) <= set(got)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
