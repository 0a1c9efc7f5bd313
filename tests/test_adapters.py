"""PEFT-format adapters: write/read round trips and every broken-adapter case naming its file and cause."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.adapters.lora import LoRAAdapter
from engines.adapters.peft_format import inspect_adapter, read_adapter, tensor_key, write_adapter
from engines.adapters.synth import synth_adapter
from engines.base import AdapterFileError
from engines.model.config import ModelArgs

BASE = ModelArgs.from_name("tiny")


def _written(tmp_path: Path, rank: int = 8, targets=("q_proj", "v_proj"), dtype=torch.float32) -> Path:
    adapter = synth_adapter(BASE, index=0, rank=rank, targets=targets, dtype=dtype)
    return write_adapter(adapter, tmp_path / "ad", "tiny", n_layers=BASE.n_layers)


def _edit_config(folder: Path, **changes) -> Path:
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return path


def _edit_tensors(folder: Path, edit) -> Path:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def _error(folder: Path, **kwargs) -> str:
    with pytest.raises(AdapterFileError) as info:
        read_adapter(folder, BASE, **kwargs)
    return str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_gives_identical_tensors(tmp_path, dtype):
    original = synth_adapter(BASE, index=3, rank=8, targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"),
                             dtype=dtype)
    folder = write_adapter(original, tmp_path / "a", "tiny", n_layers=BASE.n_layers)
    back = read_adapter(folder, BASE, name="custom")
    assert back.name == "custom" and back.path == str(folder)
    assert (back.rank, back.alpha, back.scaling, back.targets) == (8, 16.0, 2.0, original.targets)
    assert back.weights.keys() == original.weights.keys()
    for key, (a, b) in original.weights.items():
        a2, b2 = back.weights[key]
        assert a2.dtype == dtype and torch.equal(a2, a) and torch.equal(b2, b)
    assert back.nbytes() == original.nbytes() == 2 * 8 * (5 * 64 + 2 * 32 + 64 + 128 + 64) * dtype.itemsize


def test_peft_key_names_and_config_fields(tmp_path):
    folder = _written(tmp_path)
    keys = set(load_file(folder / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 2 * 2
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 8
    assert cfg["lora_alpha"] == 16 and cfg["target_modules"] == ["q_proj", "v_proj"]
    assert cfg["use_rslora"] is False and cfg["fan_in_fan_out"] is False and cfg["bias"] == "none"
    assert cfg["base_model_name_or_path"] == "tiny" and cfg["layers_to_transform"] is None


def test_delta_is_scaling_times_b_at_a():
    adapter = synth_adapter(BASE, index=1, rank=4, targets=("o_proj",), dtype=torch.float32)
    a, b = adapter.weights[(1, "o_proj")]
    assert torch.allclose(adapter.delta(1, "o_proj"), adapter.scaling * b @ a)
    assert adapter.delta(1, "o_proj").abs().max() > 0  # B is not PEFT's zero init
    with pytest.raises(KeyError, match="q_proj"):
        adapter.delta(0, "q_proj")


def test_rslora_and_odd_scalings_survive_a_round_trip(tmp_path):
    a = synth_adapter(BASE, 0, 16, ("q_proj",), dtype=torch.float32)
    rs = LoRAAdapter("rs", "", 16, 8.0, 8.0 / math.sqrt(16), a.targets, a.weights)
    back = read_adapter(write_adapter(rs, tmp_path / "rs", "tiny", n_layers=2), BASE)
    assert json.loads((tmp_path / "rs" / "adapter_config.json").read_text())["use_rslora"] is True
    assert back.scaling == pytest.approx(2.0)
    odd = LoRAAdapter("odd", "", 16, 8.0, 0.3, a.targets, a.weights)  # neither alpha/r nor alpha/sqrt(r)
    back = read_adapter(write_adapter(odd, tmp_path / "odd", "tiny", n_layers=2), BASE)
    assert back.scaling == pytest.approx(0.3)
    assert torch.allclose(back.delta(0, "q_proj"), odd.delta(0, "q_proj"))


def test_partial_layers_and_ragged_modules_round_trip(tmp_path):
    full = synth_adapter(BASE, 0, 4, ("q_proj", "up_proj"), dtype=torch.float32)
    one_layer = {k: v for k, v in full.weights.items() if k[0] == 1}
    adapter = LoRAAdapter("l1", "", 4, 8.0, 2.0, full.targets, one_layer)
    folder = write_adapter(adapter, tmp_path / "l1", "tiny", n_layers=2)
    assert json.loads((folder / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    assert read_adapter(folder, BASE).weights.keys() == one_layer.keys()
    ragged = {k: v for k, v in full.weights.items() if k != (0, "up_proj")}
    folder = write_adapter(LoRAAdapter("r", "", 4, 8.0, 2.0, full.targets, ragged), tmp_path / "r", "tiny")
    assert isinstance(json.loads((folder / "adapter_config.json").read_text())["target_modules"], str)
    assert read_adapter(folder, BASE).weights.keys() == ragged.keys()


def test_write_refuses_inconsistent_shapes(tmp_path):
    a = synth_adapter(BASE, 0, 4, ("q_proj",), dtype=torch.float32)
    bad = LoRAAdapter("bad", "", 8, 16.0, 2.0, a.targets, a.weights)  # says rank 8, holds rank 4
    with pytest.raises(ValueError, match="rank=8"):
        write_adapter(bad, tmp_path / "bad", "tiny")


def test_pickle_bin_is_read_without_running_code(tmp_path):
    folder = _written(tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    (folder / "adapter_model.safetensors").unlink()
    torch.save(tensors, folder / "adapter_model.bin")
    back = read_adapter(folder, BASE)
    assert torch.equal(back.weights[(0, "q_proj")][0], tensors[tensor_key(0, "q_proj", "A")])


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    folder = _written(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    with open(folder / "adapter_model.bin", "wb") as f:
        pickle.dump({"x": evil}, f, protocol=2)
    msg = _error(folder)
    assert "adapter_model.bin" in msg and "refused" in msg
    assert not marker.exists()
    with open(folder / "adapter_model.bin", "rb") as f:  # the file really is hostile to a plain unpickler
        pickle.load(f)
    assert marker.exists()


def test_missing_folder_and_files(tmp_path):
    assert "does not exist" in _error(tmp_path / "nowhere")
    folder = _written(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    msg = _error(folder)
    assert str(folder / "adapter_model.safetensors") in msg and "missing file" in msg
    (folder / "adapter_config.json").unlink()
    msg = _error(folder)
    assert str(folder / "adapter_config.json") in msg and "missing file" in msg


def test_malformed_json_and_wrong_peft_type(tmp_path):
    folder = _written(tmp_path)
    path = folder / "adapter_config.json"
    path.write_text('{"peft_type": "LORA", "r": 8,')
    msg = _error(folder)
    assert str(path) in msg and "malformed JSON" in msg
    path.write_text(json.dumps({"peft_type": "IA3", "target_modules": ["q_proj"]}))
    msg = _error(folder)
    assert str(path) in msg and "peft_type='IA3'" in msg


@pytest.mark.parametrize("change, words", [
    ({"target_modules": ["q_proj", "lm_head"]}, ["lm_head", "not LoRA-targetable"]),
    ({"use_dora": True}, ["use_dora", "DoRA"]),
    ({"modules_to_save": ["lm_head"]}, ["modules_to_save"]),
    ({"fan_in_fan_out": True}, ["fan_in_fan_out"]),
    ({"bias": "all"}, ["bias", "not supported"]),
    ({"r": 0}, ["r=0", "positive integer"]),
    ({"lora_alpha": "sixteen"}, ["lora_alpha", "finite number"]),
    ({"target_modules": "(unclosed"}, ["regex", "does not compile"]),
])
def test_config_values_we_cannot_serve(tmp_path, change, words):
    folder = _written(tmp_path)
    path = _edit_config(folder, **change)
    msg = _error(folder)
    assert str(path) in msg and all(w in msg for w in words), msg


def test_rank_mismatch_between_tensors_and_config(tmp_path):
    folder = _written(tmp_path, rank=8)
    _edit_config(folder, r=4)
    msg = _error(folder)
    assert "adapter_model.safetensors" in msg and "rank 8" in msg and "r=4" in msg


def test_rank_above_max_rank(tmp_path):
    folder = _written(tmp_path, rank=16)
    msg = _error(folder, max_rank=8)
    assert "adapter_model.safetensors" in msg and "rank 16 is above max_rank=8" in msg
    assert read_adapter(folder, BASE, max_rank=16).rank == 16


def test_shapes_that_do_not_match_the_base(tmp_path):
    folder = _written(tmp_path)
    other = ModelArgs(name="wider", dim=128, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=256,
                      vocab_size=512)
    with pytest.raises(AdapterFileError, match=r"in_features 64 but 'wider' has 128"):
        read_adapter(folder, other)

    def bad_out(t):
        t[tensor_key(1, "v_proj", "B")] = torch.zeros(48, 8)
    path = _edit_tensors(folder, bad_out)
    msg = _error(folder)
    assert str(path) in msg and "layer 1 v_proj" in msg and "(48, 8)" in msg and "out_features=32" in msg


def test_layer_index_beyond_the_base(tmp_path):
    folder = _written(tmp_path)

    def extra_layer(t):
        t[tensor_key(5, "q_proj", "A")] = torch.zeros(8, 64)
        t[tensor_key(5, "q_proj", "B")] = torch.zeros(64, 8)
    path = _edit_tensors(folder, extra_layer)
    msg = _error(folder)
    assert str(path) in msg and "layer index 5" in msg and "2 layers" in msg


def test_unknown_module_and_unexpected_keys_in_tensors(tmp_path):
    folder = _written(tmp_path)
    _edit_config(folder, target_modules=["q_proj", "v_proj", "qkv_proj"])
    assert "qkv_proj" in _error(folder)
    _edit_config(folder, target_modules=["q_proj", "v_proj"])

    def add_head(t):
        t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 64)
    path = _edit_tensors(folder, add_head)
    msg = _error(folder)
    assert str(path) in msg and "lm_head" in msg and "unexpected tensor" in msg


def test_missing_b_and_missing_modules(tmp_path):
    folder = _written(tmp_path)
    path = _edit_tensors(folder, lambda t: t.pop(tensor_key(0, "v_proj", "B")))
    msg = _error(folder)
    assert str(path) in msg and "layer 0 v_proj" in msg and "lora_B weight is missing" in msg

    def drop_module(t):
        t.pop(tensor_key(1, "q_proj", "A"))
        t.pop(tensor_key(1, "q_proj", "B"))
    folder = _written(tmp_path / "second")
    _edit_tensors(folder, drop_module)
    msg = _error(folder)
    assert "layer 1 q_proj" in msg and "no LoRA tensors" in msg


def test_nan_weights(tmp_path):
    folder = _written(tmp_path)

    def poison(t):
        t[tensor_key(1, "q_proj", "A")][0, 0] = float("nan")
    path = _edit_tensors(folder, poison)
    msg = _error(folder)
    assert str(path) in msg and "layer 1 q_proj" in msg and "NaN" in msg


def test_corrupt_safetensors(tmp_path):
    folder = _written(tmp_path)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    msg = _error(folder)
    assert str(path) in msg and "unreadable" in msg


def test_key_spellings_of_other_exporters_are_accepted(tmp_path):
    folder = _written(tmp_path)
    original = read_adapter(folder, BASE)

    def rename(t):
        for key in list(t):  # drop "base_model.model." and keep the adapter name, as some exporters do
            t[key.removeprefix("base_model.model.").replace(".weight", ".default.weight")] = t.pop(key)
    _edit_tensors(folder, rename)
    back = read_adapter(folder, BASE)
    assert back.weights.keys() == original.weights.keys()
    assert all(torch.equal(back.weights[k][1], original.weights[k][1]) for k in back.weights)


def test_module_under_the_wrong_submodule_is_refused(tmp_path):
    folder = _written(tmp_path)

    def misplace(t):
        for part in "AB":
            key = tensor_key(0, "q_proj", part)
            t[key.replace("self_attn", "mlp")] = t.pop(key)
    path = _edit_tensors(folder, misplace)
    msg = _error(folder)
    assert str(path) in msg and "q_proj under mlp" in msg


def test_inspect_describes_from_the_header_what_a_read_finds(tmp_path):
    folder = _written(tmp_path, rank=8, targets=("q_proj", "v_proj", "down_proj"), dtype=torch.bfloat16)
    full, head = read_adapter(folder, BASE), inspect_adapter(folder, BASE)
    assert full.loaded and not head.loaded
    assert (head.rank, head.scaling, head.targets) == (full.rank, full.scaling, full.targets)
    assert head.weights.keys() == full.weights.keys()
    for key, (a, b) in full.weights.items():
        ha, hb = head.weights[key]
        assert (ha.shape, hb.shape, ha.dtype) == (a.shape, b.shape, a.dtype) and ha.is_meta


def test_inspect_refuses_structural_faults_and_leaves_values_to_the_read(tmp_path):
    folder = _written(tmp_path)

    def poison(t):
        t[tensor_key(1, "q_proj", "A")][0, 0] = float("nan")
    _edit_tensors(folder, poison)
    assert inspect_adapter(folder, BASE).rank == 8  # values are not in the header
    assert "NaN" in _error(folder)
    _edit_tensors(folder, lambda t: t.pop(tensor_key(1, "v_proj", "B")))
    with pytest.raises(AdapterFileError, match="layer 1 v_proj: lora_B weight is missing"):
        inspect_adapter(folder, BASE)
    with pytest.raises(AdapterFileError, match="above max_rank=4"):
        inspect_adapter(_written(tmp_path / "x"), BASE, max_rank=4)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="unreadable"):
        inspect_adapter(folder, BASE)
