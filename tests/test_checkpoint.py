"""Hugging Face checkpoints: round trips (single and sharded), transformers compatibility, errors, resolve_model."""
from __future__ import annotations

import json
import dataclasses

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engines.model.checkpoint import (CheckpointError, load_args, load_checkpoint, resolve_args, resolve_model,
                                      save_checkpoint)
from engines.model.config import ModelArgs
from engines.model.weights import random_state_dict

TINY = ModelArgs.from_name("tiny")
QWEN_LIKE = ModelArgs(name="qwen-like", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                      vocab_size=300, qkv_bias=True, tie_embeddings=True, rope_theta=1e6)


def _same_shapes(a: ModelArgs, b: ModelArgs) -> bool:
    return dataclasses.replace(a, name="x") == dataclasses.replace(b, name="x")


def _assert_equal(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> None:
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("args", [TINY, QWEN_LIKE], ids=["llama", "qwen2"])
def test_single_file_round_trip(tmp_path, args):
    state = random_state_dict(args, seed=1, dtype=torch.bfloat16)
    folder = save_checkpoint(args, state, tmp_path / "ck")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back_args, back = load_checkpoint(folder)
    assert back_args.name == "ck" and _same_shapes(back_args, args)
    _assert_equal(back, state)


def test_sharded_round_trip(tmp_path):
    state = random_state_dict(TINY, seed=2)
    folder = save_checkpoint(TINY, state, tmp_path / "ck", max_shard_bytes=150_000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in state.values())
    for shard in shards:  # no shard exceeds the limit unless one tensor alone does
        tensors = load_file(folder / shard)
        assert len(tensors) == 1 or sum(t.nbytes for t in tensors.values()) <= 150_000
    _assert_equal(load_checkpoint(folder)[1], state)
    # saving unsharded into the same folder removes the old shards and index
    save_checkpoint(TINY, state, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_dtype_conversion_on_load(tmp_path):
    state = random_state_dict(TINY, seed=3)
    folder = save_checkpoint(TINY, state, tmp_path / "ck", max_shard_bytes=200_000)
    _, half = load_checkpoint(folder, dtype=torch.float16, device="cpu")
    assert all(t.dtype == torch.float16 and t.device.type == "cpu" for t in half.values())
    _assert_equal(half, {k: v.half() for k, v in state.items()})


def test_transformers_loads_ours_and_we_load_transformers(tmp_path):
    state = random_state_dict(TINY, seed=4)
    ours = save_checkpoint(TINY, state, tmp_path / "ours", max_shard_bytes=200_000)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(ours), dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    _assert_equal({k: v for k, v in model.state_dict().items() if k in state}, state)
    model.save_pretrained(str(tmp_path / "theirs"), max_shard_size="100KB")
    assert (tmp_path / "theirs" / "model.safetensors.index.json").is_file()
    args, back = load_checkpoint(tmp_path / "theirs")
    assert _same_shapes(args, TINY)
    _assert_equal(back, state)
    tokens = torch.tensor([[256, 1, 2, 3]])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "theirs"), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, model(tokens).logits)


def test_tied_lm_head_written_by_an_exporter_is_tolerated(tmp_path):
    state = random_state_dict(QWEN_LIKE)
    folder = save_checkpoint(QWEN_LIKE, state, tmp_path / "ck")
    tensors = load_file(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    _assert_equal(load_checkpoint(folder)[1], state)


def _error(folder) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    return str(info.value)


def test_missing_shard_names_the_file(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck", max_shard_bytes=150_000)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    msg = _error(folder)
    assert str(shard) in msg and "missing shard" in msg


def test_missing_tensor_names_the_file_and_tensor(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    msg = _error(folder)
    assert str(folder / "model.safetensors") in msg and "model.layers.1.mlp.down_proj.weight" in msg
    assert "missing" in msg


def test_unexpected_shape_names_the_shard_and_tensor(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck", max_shard_bytes=150_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.0.self_attn.k_proj.weight"]
    tensors = load_file(folder / shard)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    msg = _error(folder)
    assert str(folder / shard) in msg and "k_proj" in msg and "(64, 64)" in msg and "(32, 64)" in msg


def test_unexpected_tensor_names_the_file(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.experts.0.weight"] = torch.zeros(2, 2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    msg = _error(folder)
    assert str(folder / "model.safetensors") in msg and "experts" in msg


def test_non_llama_and_broken_configs_name_config_json(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck")
    config = folder / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    msg = _error(folder)
    assert str(config) in msg and "gpt2" in msg and "not a Llama-family" in msg
    config.write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    msg = _error(folder)
    assert str(config) in msg and "hidden_size" in msg
    config.write_text("{not json")
    assert "malformed JSON" in _error(folder)
    config.unlink()
    msg = _error(folder)
    assert str(config) in msg and "missing file" in msg


def test_missing_weights_and_pickle_only_checkpoints(tmp_path):
    folder = save_checkpoint(TINY, random_state_dict(TINY), tmp_path / "ck")
    (folder / "model.safetensors").unlink()
    msg = _error(folder)
    assert str(folder / "model.safetensors") in msg and "missing file" in msg
    (folder / "pytorch_model.bin").write_bytes(b"")
    assert "convert them to safetensors" in _error(folder)


def test_save_refuses_a_state_dict_of_another_model(tmp_path):
    state = random_state_dict(TINY)
    with pytest.raises(ValueError, match="missing"):
        save_checkpoint(QWEN_LIKE, state, tmp_path / "a")
    state["model.norm.weight"] = torch.ones(65)
    with pytest.raises(ValueError, match="model.norm.weight"):
        save_checkpoint(TINY, state, tmp_path / "b")


def test_resolve_model_preset_and_folder(tmp_path):
    args, state = resolve_model("tiny", seed=7)
    assert args == TINY
    _assert_equal(state, random_state_dict(TINY, seed=7))
    folder = save_checkpoint(args, random_state_dict(args, seed=8, dtype=torch.float16), tmp_path / "ck")
    args2, state2 = resolve_model(str(folder))
    assert _same_shapes(args2, TINY) and state2["model.norm.weight"].dtype == torch.float16
    _assert_equal(state2, random_state_dict(TINY, seed=8, dtype=torch.float16))
    _, state3 = resolve_model(str(folder), dtype=torch.float32)
    assert state3["lm_head.weight"].dtype == torch.float32
    assert _same_shapes(resolve_args(str(folder)), TINY) and resolve_args("llama3-8b").n_layers == 32
    assert load_args(folder).name == "ck"
    with pytest.raises(CheckpointError, match="neither a preset"):
        resolve_model("no-such-model")
    with pytest.raises(CheckpointError, match="neither a preset"):
        resolve_args(str(tmp_path / "absent"))
