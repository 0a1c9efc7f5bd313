"""MultiLoRAEngine on the CPU: greedy tokens equal a merged-weights reference, alone or batched, preempted or swapped."""
import pytest
import torch

from engines.adapters.peft_format import read_adapter
from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.model.llama import AttnMeta, build_model
from engines.registry import create_engine

ARGS = ModelArgs.from_name("tiny")
N_NEW = 6


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 4, [4, 8], ["q_proj", "k_proj", "v_proj", "o_proj"], root, prefix="attn-", dtype=torch.float32)
    make_adapters(ARGS, 2, [16, 2], ["q_proj", "gate_proj", "up_proj", "down_proj"], root, prefix="mlp-",
                  seed=1, dtype=torch.float32)
    return root


NAMES = ["attn-0000", "attn-0001", "attn-0002", "attn-0003", "mlp-0000", "mlp-0001"]


def reference_tokens(adapter_path, prompt, n):
    """Greedy decoding by full recompute with the adapter merged into the weights (no cache reuse)."""
    model = build_model(ARGS, torch.float32, "cpu", seed=0)
    if adapter_path is not None:
        ad = read_adapter(adapter_path, ARGS)
        sd = model.hf_state_dict()
        for (layer, m) in ad.weights:
            grp = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"model.layers.{layer}.{grp}.{m}.weight"
            sd[key] = sd[key] + ad.delta(layer, m)
        model.load_hf_state_dict(sd)
    for blk in model.model.layers:
        blk.self_attn.k_cache = torch.zeros(64, 16, ARGS.n_kv_heads, ARGS.head_dim)
        blk.self_attn.v_cache = torch.zeros(64, 16, ARGS.n_kv_heads, ARGS.head_dim)
    ids = list(prompt)
    for _ in range(n):
        t = len(ids)
        h = model(torch.tensor(ids), torch.arange(t), AttnMeta(True, torch.arange(t) + 16, seq_lens=[t]))
        ids.append(int(model.logits(h[-1:]).argmax(-1)))
    return ids[len(prompt):]


def engine(adapter_dir, **kw):
    return create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir), **kw))


def prompt(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randint(0, 256, (5 + 3 * i,), generator=g).tolist()


def drain(eng, arrivals=None, max_steps=2000):
    """Run to completion; arrivals: {step: [Request]} added before that step. Returns id -> tokens, reasons."""
    arrivals = dict(arrivals or {})
    toks, reasons = {}, {}
    step = 0
    while (eng.has_unfinished() or arrivals) and step < max_steps:
        for req in arrivals.pop(step, []):
            eng.add_request(req)
        for out in eng.step():
            toks.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                reasons[out.request_id] = out.finish_reason
        step += 1
    assert not eng.has_unfinished(), "engine did not finish within the step bound"
    return toks, reasons


def greedy(n=N_NEW):
    return SamplingParams(max_tokens=n, ignore_eos=True)


@pytest.fixture(scope="module")
def expected(adapter_dir):
    """Reference tokens for request i on adapter NAMES[i % 7] (index 6: the base model)."""
    out = {}
    for i in range(10):
        name = (NAMES + [None])[i % 7]
        out[f"r{i}"] = reference_tokens(None if name is None else adapter_dir / name, prompt(i), N_NEW)
    return out


def requests():
    return [Request(f"r{i}", prompt(i), (NAMES + [None])[i % 7], greedy()) for i in range(10)]


def test_each_adapter_alone_equals_merged_weights(adapter_dir, expected):
    eng = engine(adapter_dir)
    for req in requests()[:7]:
        eng.add_request(req)
        toks, reasons = drain(eng)
        assert toks[req.request_id] == expected[req.request_id], req.adapter
        assert reasons[req.request_id] == "length"
    assert len(set(map(tuple, expected.values()))) > 5  # adapters really change the tokens


STEP_KINDS = [{}, {"mixed_steps": False}, {"mixed_graphs": True}]  # mixed (varlen prompts), separate, prompt rows


@pytest.mark.parametrize("extra", STEP_KINDS)
def test_mixed_batch_with_staggered_arrivals(adapter_dir, expected, extra):
    eng = engine(adapter_dir, extra=extra)
    toks, _ = drain(eng, {i: [r] for i, r in enumerate(requests())})
    assert toks == expected
    st = eng.stats()
    assert st["tokens_generated"] == 10 * N_NEW and st["adapters_resident"] == 6 and st["kv_blocks_used"] == 0


@pytest.mark.parametrize("extra", STEP_KINDS)
def test_forced_preemption_gives_the_same_tokens(adapter_dir, expected, extra):
    eng = engine(adapter_dir, num_kv_blocks=10, block_size=4, extra=extra)
    toks, _ = drain(eng, {0: requests()[:5], 3: requests()[5:]})
    assert toks == expected
    assert eng.stats()["preemptions"] > 0


def test_fewer_gpu_slots_than_adapters(adapter_dir, expected):
    eng = engine(adapter_dir, gpu_slots=2, max_loras=2)
    toks, _ = drain(eng, {0: requests()[:5], 3: requests()[5:]})
    assert toks == expected
    st = eng.stats()
    assert st["adapter_evictions"] > 0 and st["adapter_loads"] >= 6 and st["adapters_resident"] <= 2


def test_host_capacity_rereads_adapters_from_disk(adapter_dir, expected):
    eng = engine(adapter_dir, gpu_slots=2, host_adapter_capacity=2)
    assert eng.stats()["adapters_host"] == 2
    toks, _ = drain(eng, {0: requests()})
    assert toks == expected
    assert eng.stats()["adapter_host_reads"] >= 4
