"""Hugging Face checkpoints (config.json + safetensors, sharded or not): read, write, and preset-or-folder resolution."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engines.model.config import PRESETS, ModelArgs
from engines.model.weights import hf_param_shapes, random_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# tensors some exporters add that carry nothing the model needs (recomputed or tied)
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint folder is broken or not a Llama-family model; the message names the file and the cause."""


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file; a checkpoint folder needs {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed JSON ({exc}); fix or re-export the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the top level is not a JSON object; re-export the file")
    return data


def load_args(path) -> ModelArgs:
    """ModelArgs from a checkpoint folder's config.json, without touching the weights."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (it does not exist or is a file); "
                              f"give a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, or a preset: {sorted(PRESETS)}")
    cfg_path = folder / CONFIG_NAME
    cfg = _read_json(cfg_path, "config.json (transformers' save_pretrained writes it)")
    try:
        return ModelArgs.from_hf_config(cfg, name=folder.name)
    except KeyError as exc:
        raise CheckpointError(f"{cfg_path}: lacks the field {exc.args[0]!r}; give a complete Llama-family "
                              "config.json") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None


def _weight_files(folder: Path) -> tuple[Path, dict[str, Path]]:
    """(the file that says where tensors live, tensor name -> shard file) for a single or sharded checkpoint."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index, "a valid index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: has no weight_map of tensor name -> shard file; re-export the checkpoint")
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise CheckpointError(f"{index}: shard {shard!r} is not a plain file name in the folder; "
                                      "re-export the checkpoint")
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard}: missing shard listed in {index.name}; copy every "
                                      "shard of the checkpoint into the folder")
        return index, {name: folder / shard for name, shard in weight_map.items()}
    single = folder / WEIGHTS_NAME
    if not single.is_file():
        found = sorted(p.name for p in folder.glob("*.bin"))
        hint = (f" (found {found[:3]}: pickle checkpoints are not read; convert them to safetensors)" if found else "")
        raise CheckpointError(f"{single}: missing file{hint}; a checkpoint folder needs {WEIGHTS_NAME} or "
                              f"{INDEX_NAME} with its shards")
    try:
        with safe_open(str(single), framework="pt") as f:
            return single, {name: single for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{single}: unreadable safetensors file ({exc}); re-export the checkpoint") from None


def load_checkpoint(path, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Read a Llama-family checkpoint folder: ModelArgs and the state dict with Hugging Face names.

    dtype None keeps each tensor's stored dtype; tensors are read one at a time straight to `device`.
    """
    folder = Path(path)
    args = load_args(folder)
    source, where = _weight_files(folder)
    expected = hf_param_shapes(args)
    for name in expected:
        if name not in where:
            raise CheckpointError(f"{source}: tensor {name!r} is missing; the checkpoint does not match its "
                                  f"{CONFIG_NAME} ({args.n_layers} layers, dim {args.dim})")
    for name in where:
        if name not in expected and not _IGNORED.match(name) and not (args.tie_embeddings and name == "lm_head.weight"):
            raise CheckpointError(f"{where[name]}: unexpected tensor {name!r} for a Llama-family model; "
                                  "give a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM checkpoint")
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(where[name], []).append(name)
    state: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for name in names:
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != expected[name]:
                        raise CheckpointError(f"{file}: tensor {name!r} has shape {shape}, expected "
                                              f"{expected[name]} from {CONFIG_NAME}; the weights do not match "
                                              "the config")
                    t = f.get_tensor(name)
                    state[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: unreadable safetensors file ({exc}); re-export the checkpoint") from None
    return args, state


def _check_state(args: ModelArgs, state_dict: dict[str, torch.Tensor]) -> None:
    expected = hf_param_shapes(args)
    missing = [n for n in expected if n not in state_dict]
    extra = [n for n in state_dict if n not in expected]
    if missing or extra:
        raise ValueError(f"state dict does not match {args.name!r}: missing {missing[:3]}, unexpected {extra[:3]}"
                         f" ({len(missing)} and {len(extra)} in all); pass the state dict of this model")
    bad = [(n, tuple(state_dict[n].shape), s) for n, s in expected.items() if tuple(state_dict[n].shape) != s]
    if bad:
        name, got, want = bad[0]
        raise ValueError(f"state dict tensor {name!r} has shape {got}, expected {want} for {args.name!r}")


def _dtype_name(state_dict: dict[str, torch.Tensor]) -> str:
    floats = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    return str(floats.pop()).removeprefix("torch.") if len(floats) == 1 else "float32"


def save_checkpoint(args: ModelArgs, state_dict: dict[str, torch.Tensor], path,
                    max_shard_bytes: int | None = None) -> Path:
    """Write config.json and the weights as transformers' save_pretrained does; returns the folder.

    With max_shard_bytes, tensors go to model-0000k-of-0000n.safetensors files of at most that size
    (a larger tensor gets a shard of its own) plus model.safetensors.index.json.
    """
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes} must be a positive number of bytes (or None)")
    _check_state(args, state_dict)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    # weights of an earlier save in this folder would contradict the new ones (an index wins over a single file)
    for old in folder.iterdir():
        if old.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD.match(old.name):
            old.unlink()
    names = list(hf_param_shapes(args))
    nbytes = {n: state_dict[n].nelement() * state_dict[n].element_size() for n in names}
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        if max_shard_bytes is not None and shards[-1] and size + nbytes[name] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes[name]
    files = ([WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, shard in zip(files, shards):
        tensors = {n: state_dict[n].detach().to("cpu").contiguous() for n in shard}
        save_file(tensors, folder / (file + ".tmp"), metadata={"format": "pt"})
        os.replace(folder / (file + ".tmp"), folder / file)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(nbytes.values())},
                 "weight_map": {n: f for f, shard in zip(files, shards) for n in shard}}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = {**args.to_hf_config(), "torch_dtype": _dtype_name(state_dict)}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def _unknown_model(spec: str) -> CheckpointError:
    return CheckpointError(f"model {spec!r} is neither a preset ({sorted(PRESETS)}) nor a checkpoint folder; "
                           "give a preset name or a folder with config.json and safetensors")


def resolve_model(spec: str, seed: int = 0, dtype: torch.dtype | None = None,
                  device: str | torch.device = "cpu") -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A preset name (random weights from `seed`, float32 unless dtype) or a checkpoint folder (stored dtype
    unless dtype): the model's args and its state dict with Hugging Face names."""
    if spec in PRESETS:
        args = ModelArgs.from_name(spec)
        return args, random_state_dict(args, seed=seed, dtype=dtype or torch.float32, device=device)
    if Path(spec).is_dir():
        return load_checkpoint(spec, dtype=dtype, device=device)
    raise _unknown_model(spec)


def resolve_args(spec: str) -> ModelArgs:
    """Like resolve_model but only the shapes: a preset's ModelArgs or a folder's config.json."""
    if spec in PRESETS:
        return ModelArgs.from_name(spec)
    if Path(spec).is_dir():
        return load_args(spec)
    raise _unknown_model(spec)
