"""MultiLoRAEngine's interface: sampling parameters, stop conditions, adapters while serving, errors, stats."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.adapters.synth import make_adapters, synth_adapter
from engines.base import AdapterFileError, AdapterNotFoundError, Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.multilora.engine import MultiLoRAEngine
from engines.registry import create_engine, engine_class

ARGS = ModelArgs.from_name("tiny")
PROMPT = [256, 72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 3, [4, 8], ["q_proj", "v_proj"], root, dtype=torch.float32)
    return root


@pytest.fixture(scope="module")
def eng(adapter_dir):
    return create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir)))


def run(eng, reqs, max_steps=500):
    for r in reqs:
        eng.add_request(r)
    toks, outs = {}, {}
    for _ in range(max_steps):
        if not eng.has_unfinished():
            break
        for o in eng.step():
            toks.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finished:
                outs[o.request_id] = o
    assert not eng.has_unfinished()
    return toks, outs


def test_registry_and_attributes(eng):
    assert engine_class("multilora") is MultiLoRAEngine and isinstance(eng, MultiLoRAEngine)
    assert eng.eos_token_id == 257 and eng.vocab_size == 512 and eng.max_model_len == 2048
    assert sorted(eng.adapters()) == ["adapter-0000", "adapter-0001", "adapter-0002"]


def test_seeded_sampling_repeats_whatever_the_batch(eng):
    p = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=11, ignore_eos=True)
    alone, _ = run(eng, [Request("a", PROMPT, "adapter-0001", p)])
    others = [Request(f"o{i}", PROMPT[:3 + i], None, SamplingParams(max_tokens=5, temperature=0.7)) for i in range(3)]
    mixed, _ = run(eng, others + [Request("a", PROMPT, "adapter-0001", p)])
    assert alone["a"] == mixed["a"]
    other_seed, _ = run(eng, [Request("a", PROMPT, "adapter-0001", SamplingParams(
        max_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=12, ignore_eos=True))])
    assert other_seed["a"] != alone["a"]


def test_top_k_one_and_tiny_top_p_are_greedy(eng):
    g, _ = run(eng, [Request("g", PROMPT, "adapter-0000", SamplingParams(max_tokens=6, ignore_eos=True))])
    k1, _ = run(eng, [Request("g", PROMPT, "adapter-0000", SamplingParams(max_tokens=6, temperature=2.0, top_k=1,
                                                                          ignore_eos=True))])
    p0, _ = run(eng, [Request("g", PROMPT, "adapter-0000", SamplingParams(max_tokens=6, temperature=2.0, top_p=1e-6,
                                                                          ignore_eos=True))])
    assert g["g"] == k1["g"] == p0["g"]


def test_stop_tokens_min_tokens_and_lengths(eng):
    free, _ = run(eng, [Request("f", PROMPT, None, SamplingParams(max_tokens=10, ignore_eos=True))])
    stop_at = free["f"][3]
    first = free["f"].index(stop_at)
    toks, outs = run(eng, [Request("s", PROMPT, None, SamplingParams(max_tokens=10, stop_token_ids=(stop_at,)))])
    assert toks["s"] == free["f"][:first + 1] and outs["s"].finish_reason == "stop"
    assert outs["s"].output_tokens == first + 1 and outs["s"].prompt_tokens == len(PROMPT)
    toks, outs = run(eng, [Request("m", PROMPT, None, SamplingParams(max_tokens=10, min_tokens=first + 1,
                                                                     stop_token_ids=(stop_at,)))])
    assert stop_at not in toks["m"][:first + 1] and len(toks["m"]) > first + 1
    toks, outs = run(eng, [Request("l", PROMPT, None, SamplingParams(max_tokens=4, ignore_eos=True))])
    assert len(toks["l"]) == 4 and outs["l"].finish_reason == "length"


def test_eos_stops_unless_ignored(adapter_dir):
    eng = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir)))
    free, _ = run(eng, [Request("f", PROMPT, None, SamplingParams(max_tokens=10, ignore_eos=True))])
    eng.eos_token_id = free["f"][2]  # pretend a token the model emits is EOS
    toks, outs = run(eng, [Request("e", PROMPT, None, SamplingParams(max_tokens=10))])
    assert toks["e"][-1] == eng.eos_token_id and outs["e"].finish_reason == "stop" and len(toks["e"]) <= 3
    toks, _ = run(eng, [Request("i", PROMPT, None, SamplingParams(max_tokens=10, ignore_eos=True))])
    assert toks["i"] == free["f"]


def test_adapters_come_and_go_while_serving(eng, adapter_dir, tmp_path):
    eng.add_request(Request("long", PROMPT, "adapter-0000", SamplingParams(max_tokens=30, ignore_eos=True)))
    early = eng.step()
    eng.register_adapter_loader("late", lambda: synth_adapter(ARGS, 9, 4, ["q_proj"], dtype=torch.float32, name="late"))
    eng.add_request(Request("late-req", PROMPT, "late", SamplingParams(max_tokens=3, ignore_eos=True)))
    eng.add_request(Request("doomed", PROMPT, "adapter-0002", SamplingParams(max_tokens=30, ignore_eos=True)))
    early += eng.step()
    eng.unregister_adapter("adapter-0002")
    toks, outs = run(eng, [])
    for o in early:
        toks[o.request_id] = o.new_token_ids + toks.get(o.request_id, [])
    assert len(toks["long"]) == 30 and len(toks["late-req"]) == 3
    assert outs["doomed"].finish_reason == "error" and "unregistered" in outs["doomed"].error
    assert "adapter-0002" not in eng.adapters()
    with pytest.raises(AdapterNotFoundError):
        eng.add_request(Request("x", PROMPT, "adapter-0002"))
    eng.register_adapter("adapter-0002", str(adapter_dir / "adapter-0002"))
    eng.unregister_adapter("late")
    with pytest.raises(AdapterNotFoundError):
        eng.unregister_adapter("late")


def test_bad_input_is_rejected_with_a_reason(eng, tmp_path):
    with pytest.raises(AdapterFileError):
        eng.register_adapter("broken", str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        eng.add_request(Request("e", []))
    with pytest.raises(ValueError, match="outside"):
        eng.add_request(Request("v", [600]))
    with pytest.raises(ValueError, match="max_model_len"):
        eng.add_request(Request("long", [1] * 3000))
    with pytest.raises(ValueError, match="unknown extra"):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={"bogus": 1}))
    with pytest.raises(ValueError, match="neither a preset"):
        create_engine(EngineConfig(model="no-such-model", device="cpu"))
    narrow = EngineConfig(model="tiny", device="cpu", extra={"lora_targets": ["q_proj"]})
    e2 = create_engine(narrow)  # q_proj: slots for q, k and v only
    with pytest.raises(AdapterFileError, match="lora_targets"):
        e2.register_adapter_loader("v", lambda: synth_adapter(ARGS, 1, 4, ["down_proj"], dtype=torch.float32))


def test_abort_frees_everything(eng):
    eng.add_request(Request("a1", PROMPT, "adapter-0001", SamplingParams(max_tokens=50, ignore_eos=True)))
    eng.step()
    eng.step()
    assert eng.stats()["running"] == 1 and eng.stats()["kv_blocks_used"] > 0
    eng.abort("a1")
    eng.abort("unknown-id")
    st = eng.stats()
    assert not eng.has_unfinished() and st["running"] == 0 and st["kv_blocks_used"] == 0


def test_stats_keys(adapter_dir):
    eng = create_engine(EngineConfig(model="tiny", device="cpu"))
    eng.add_request(Request("d", PROMPT, None, SamplingParams(max_tokens=3, ignore_eos=True)))
    run(eng, [])
    st = eng.stats()
    for key in ("queue_depth", "running", "batch_size", "kv_blocks_used", "kv_blocks_total", "adapters_resident",
                "adapter_loads", "adapter_evictions", "adapter_load_seconds", "preemptions", "steps",
                "tokens_generated"):
        assert key in st
    assert st["steps"] == 3 and st["tokens_generated"] == 3 and st["kv_blocks_total"] == 2048
    # the engine thread's time in steps, of which none blocked on a device on the CPU
    assert st["step_seconds"] > 0 and st["device_wait_seconds"] == 0.0


def test_adapter_that_breaks_after_registration_fails_its_requests(tmp_path):
    import shutil
    root = tmp_path / "ads"
    make_adapters(ARGS, 2, [4], ["q_proj"], root, dtype=torch.float32)
    eng = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root), host_adapter_capacity=1))
    assert eng.stats()["adapters_host"] == 1  # adapter-0001 is re-read from disk when wanted
    shutil.rmtree(root / "adapter-0001")
    toks, outs = run(eng, [Request("ok", PROMPT, "adapter-0000", SamplingParams(max_tokens=2, ignore_eos=True)),
                           Request("bad", PROMPT, "adapter-0001", SamplingParams(max_tokens=2, ignore_eos=True))])
    assert outs["ok"].finish_reason == "length" and len(toks["ok"]) == 2
    assert outs["bad"].finish_reason == "error" and "adapter-0001" in outs["bad"].error


def test_engine_serves_a_local_checkpoint_folder(tmp_path):
    from engines.model.checkpoint import save_checkpoint
    from engines.model.weights import random_state_dict
    save_checkpoint(ARGS, random_state_dict(ARGS, seed=0), tmp_path / "ckpt")
    req = [Request("c", PROMPT, None, SamplingParams(max_tokens=5, ignore_eos=True))]
    from_folder, _ = run(create_engine(EngineConfig(model=str(tmp_path / "ckpt"), device="cpu")), req)
    req = [Request("c", PROMPT, None, SamplingParams(max_tokens=5, ignore_eos=True))]
    from_preset, _ = run(create_engine(EngineConfig(model="tiny", device="cpu", seed=0)), req)
    assert from_folder == from_preset


def test_sampler_bans_each_rows_own_tokens():
    import torch

    from engines.multilora.sampler import Sampler

    logits = torch.zeros(3, 8)
    logits[:, 5] = 3.0  # every row's argmax is 5 ...
    logits[:, 2] = 2.0  # ... then 2, then 7
    logits[:, 7] = 1.0
    greedy = SamplingParams(max_tokens=4)
    got = Sampler(torch.device("cpu"))(logits, ["a", "b", "c"], [greedy] * 3, [(5,), (5, 2), ()])
    assert got == [2, 7, 5]


def test_a_large_fleet_registers_from_headers_and_reads_weights_on_demand(tmp_path):
    root = tmp_path / "fleet"
    make_adapters(ARGS, 6, [4], ["q_proj", "v_proj"], root, dtype=torch.float32)
    bad = root / "adapter-0005" / "adapter_model.safetensors"  # values broken after it was written
    tensors = load_file(bad)
    next(iter(tensors.values()))[0, 0] = float("nan")
    save_file(tensors, bad, metadata={"format": "pt"})
    e = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root), host_adapter_capacity=2,
                                   gpu_slots=2, max_loras=2))
    assert len(e.adapters()) == 6 and e.stats()["adapters_host"] == 2  # only two were read at start
    reqs = [Request(f"r{i}", PROMPT, f"adapter-{i:04d}", SamplingParams(max_tokens=4, ignore_eos=True))
            for i in range(6)]
    toks, outs = run(e, reqs)
    for i in range(5):
        assert outs[f"r{i}"].finish_reason == "length" and len(toks[f"r{i}"]) == 4
    assert outs["r5"].finish_reason == "error" and str(bad) in outs["r5"].error and "NaN" in outs["r5"].error
    assert e.stats()["adapter_host_reads"] >= 4
    # the lazily read adapter gives the tokens of the same adapter served from a fresh engine
    shutil.copytree(root / "adapter-0004", tmp_path / "one" / "adapter-0004")
    ref = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(tmp_path / "one")))
    assert run(ref, [Request("x", PROMPT, "adapter-0004", SamplingParams(max_tokens=4, ignore_eos=True))])[0]["x"] \
        == toks["r4"]


def test_without_a_host_capacity_start_adapters_fill_at_most_a_share_of_ram(tmp_path, capsys, monkeypatch):
    from engines.multilora import adapter_pool
    from engines.adapters.peft_format import inspect_adapter
    root = tmp_path / "fleet"
    make_adapters(ARGS, 5, [4], ["q_proj", "v_proj"], root, dtype=torch.float32)
    e = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root)))
    assert e.stats()["adapters_host"] == 5 and "pinned host memory" not in capsys.readouterr().err
    one = adapter_pool.packed_nbytes(inspect_adapter(root / "adapter-0000", ARGS), e.model, e.dtype)
    assert one == e.pool._host_data["adapter-0000"].nbytes  # the estimate is what packing allocates
    ram = int(2.5 * one / adapter_pool.HOST_RAM_SHARE)  # room for two and a half adapters
    monkeypatch.setattr(adapter_pool, "host_ram_bytes", lambda: ram)
    e = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root)))
    assert e.stats()["adapters_host"] == 2 and e.pool.host.capacity == 2
    assert "5 start adapters" in capsys.readouterr().err
    toks, outs = run(e, [Request(f"r{i}", PROMPT, f"adapter-{i:04d}", SamplingParams(max_tokens=2, ignore_eos=True))
                         for i in range(5)])
    assert all(o.finish_reason == "length" for o in outs.values()) and len(outs) == 5
    e = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root), host_adapter_capacity=4))
    assert e.stats()["adapters_host"] == 4  # a configured capacity is kept as it is


def test_start_reads_adapters_in_parallel_and_refuses_a_broken_one_by_path(tmp_path):
    from engines.adapters.peft_format import read_adapter
    from engines.multilora.adapter_pool import pack_adapter
    root = tmp_path / "fleet"
    make_adapters(ARGS, 12, [4, 8], ["q_proj", "v_proj", "down_proj"], root, dtype=torch.float32)
    e = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root)))
    assert e.stats()["adapters_host"] == 12
    for name in ("adapter-0000", "adapter-0007", "adapter-0011"):
        want = pack_adapter(read_adapter(root / name, ARGS), e.model, e.dtype, pin=False)
        got = e.pool._host_data[name]
        assert got.rank == want.rank and got.packed.keys() == want.packed.keys()
        for group, (a, b) in want.packed.items():
            assert torch.equal(got.packed[group][0], a) and torch.equal(got.packed[group][1], b)
    bad = root / "adapter-0009" / "adapter_model.safetensors"
    tensors = load_file(bad)
    next(iter(tensors.values()))[0, 0] = float("inf")
    save_file(tensors, bad, metadata={"format": "pt"})
    with pytest.raises(AdapterFileError, match="adapter-0009.*infinite"):
        create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(root)))
