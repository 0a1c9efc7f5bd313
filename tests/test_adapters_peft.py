"""The real peft library loads what we write, and we read what peft writes (rank/alpha patterns included)."""
from __future__ import annotations

import peft
import pytest
import torch
import transformers

from engines.adapters.lora import LoRAAdapter
from engines.adapters.peft_format import read_adapter, write_adapter
from engines.adapters.synth import synth_adapter
from engines.adapters.validate import module_path
from engines.model.config import LORA_TARGETS, ModelArgs
from engines.model.weights import random_state_dict

# peft calls a transformers API that transformers 5 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

BASE = ModelArgs.from_name("tiny")
TOKENS = torch.tensor([[256, 5, 17, 99, 300, 42, 7, 128]])


def _hf_model(state: dict[str, torch.Tensor]):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE.to_hf_config())).float().eval()
    model.load_state_dict(state, strict=True)
    return model


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _merged(state: dict[str, torch.Tensor], adapter: LoRAAdapter) -> dict[str, torch.Tensor]:
    out = dict(state)
    for layer, module in adapter.weights:
        name = module_path(layer, module) + ".weight"
        out[name] = state[name] + adapter.delta(layer, module).to(state[name].dtype)
    return out


def _full(rank: int) -> LoRAAdapter:
    return synth_adapter(BASE, index=7, rank=rank, targets=LORA_TARGETS, dtype=torch.float32)


def _ragged(rank: int) -> LoRAAdapter:
    full = _full(rank)
    keep = {k: v for k, v in full.weights.items() if k not in ((0, "up_proj"), (1, "q_proj"))}
    return LoRAAdapter("ragged", "", rank, full.alpha, full.scaling, full.targets, keep)


def _layer1(rank: int) -> LoRAAdapter:
    full = _full(rank)
    keep = {k: v for k, v in full.weights.items() if k[0] == 1}
    return LoRAAdapter("layer1", "", rank, full.alpha, full.scaling, full.targets, keep)


@pytest.mark.parametrize("build", [_full, _ragged, _layer1])
def test_peft_loads_our_adapter_and_matches_our_merged_delta(tmp_path, build):
    state = random_state_dict(BASE, seed=3)
    adapter = build(8)
    folder = write_adapter(adapter, tmp_path / "ad", "tiny", n_layers=BASE.n_layers)
    base_logits = _logits(_hf_model(state))
    merged_logits = _logits(_hf_model(_merged(state, adapter)))
    peft_model = peft.PeftModel.from_pretrained(_hf_model(state), str(folder)).eval()
    peft_logits = _logits(peft_model)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapter visibly changes outputs
    torch.testing.assert_close(peft_logits, merged_logits, rtol=1e-4, atol=1e-4)
    wrapped = sum(1 for m in peft_model.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    assert wrapped == len(adapter.weights)  # peft put LoRA exactly where we have weights, nowhere else


def test_we_read_what_peft_writes_with_rank_and_alpha_patterns(tmp_path):
    state = random_state_dict(BASE, seed=4)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                             rank_pattern={"v_proj": 4, "model.layers.1.self_attn.q_proj": 2},
                             alpha_pattern={"down_proj": 3}, init_lora_weights=False, task_type="CAUSAL_LM")
    torch.manual_seed(1)
    peft_model = peft.get_peft_model(_hf_model(state), config).eval()
    peft_model.save_pretrained(str(tmp_path / "ad"))
    peft_logits = _logits(peft_model)

    ours = read_adapter(tmp_path / "ad", BASE)
    assert ours.rank == 8 and ours.scaling == 2.0 and ours.targets == ("q_proj", "v_proj", "down_proj")
    a, b = ours.weights[(1, "q_proj")]  # rank 2 padded to 8 with zeros
    assert a.shape == (8, 64) and b.shape == (64, 8) and not a[2:].any() and not b[:, 2:].any()
    for (layer, module), (a, b) in ours.weights.items():
        lora = peft_model.get_submodule("base_model.model." + module_path(layer, module))
        expected = lora.get_delta_weight("default")
        torch.testing.assert_close(ours.delta(layer, module), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_logits(_hf_model(_merged(state, ours))), peft_logits, rtol=1e-4, atol=1e-4)


def test_rslora_written_by_peft_reads_with_its_scaling(tmp_path):
    config = peft.LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=["o_proj"],
                             init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = peft.get_peft_model(_hf_model(random_state_dict(BASE)), config)
    peft_model.save_pretrained(str(tmp_path / "rs"))
    ours = read_adapter(tmp_path / "rs", BASE)
    assert ours.scaling == pytest.approx(8 / 4)
    lora = peft_model.get_submodule("base_model.model.model.layers.0.self_attn.o_proj")
    torch.testing.assert_close(ours.delta(0, "o_proj"), lora.get_delta_weight("default"), rtol=1e-5, atol=1e-6)
