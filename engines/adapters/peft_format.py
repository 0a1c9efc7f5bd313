"""Read and write LoRA adapters in Hugging Face PEFT's on-disk format (adapter_config.json + safetensors)."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engines.adapters.folders import CONFIG_NAME, PICKLE_WEIGHTS_NAME, WEIGHTS_NAME, adapter_folders
from engines.adapters.lora import LoRAAdapter
from engines.adapters.validate import (LoraSettings, check_config, check_pair, fail, module_group,
                                       module_path)
from engines.model.config import LORA_TARGETS, ModelArgs

__all__ = ["LoRAAdapter", "read_adapter", "inspect_adapter", "write_adapter", "read_config", "tensor_key",
           "CONFIG_NAME", "WEIGHTS_NAME", "PICKLE_WEIGHTS_NAME"]


# PEFT saves "base_model.model.<name in the base>.lora_A.weight"; some exporters keep the adapter name
# ("lora_A.default.weight") or drop the "base_model.model." prefix.
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def tensor_key(layer: int, module: str, part: str) -> str:
    """The key PEFT's save_pretrained writes for one LoRA matrix (part is "A" or "B")."""
    return f"base_model.model.{module_path(layer, module)}.lora_{part}.weight"


def read_config(folder: Path) -> LoraSettings:
    """Load and check adapter_config.json of an adapter folder."""
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise fail(folder, "adapter folder does not exist" if not folder.exists() else "is not a folder",
                   f"give a folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not path.is_file():
        raise fail(path, "missing file", f"an adapter folder needs {CONFIG_NAME} (PEFT's save_pretrained writes it)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(path, f"malformed JSON ({exc})", "fix or re-export the adapter config") from None
    return check_config(cfg, path)


def _load_tensors(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The adapter's tensors by key, from safetensors, or from a .bin read without executing any pickle code."""
    path = folder / WEIGHTS_NAME
    if path.is_file():
        try:
            return path, load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise fail(path, f"unreadable safetensors file ({exc})", "re-export the adapter") from None
    path = folder / PICKLE_WEIGHTS_NAME
    if path.is_file():
        try:
            # weights_only: tensors and plain containers only; any other pickled object is refused, never run
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            raise fail(path, f"refused to load: not a plain tensor file ({str(exc).splitlines()[0]})",
                       f"convert the adapter to {WEIGHTS_NAME} with a trusted PEFT install") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise fail(path, "does not hold a flat dict of tensors", f"convert the adapter to {WEIGHTS_NAME}")
        return path, state
    raise fail(folder / WEIGHTS_NAME, "missing file",
               f"an adapter folder needs {WEIGHTS_NAME} (or {PICKLE_WEIGHTS_NAME}) next to {CONFIG_NAME}")


# safetensors dtype codes -> torch dtypes, to describe a file's tensors from its header alone
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _header_tensors(folder: Path) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """The safetensors file's tensors as meta tensors (shape and dtype, no data), from its header; None
    when the folder holds only a .bin (which cannot be described without unpickling it)."""
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metas = {}
            for key in f.keys():
                sl = f.get_slice(key)
                metas[key] = torch.empty(sl.get_shape(), dtype=_ST_DTYPES.get(sl.get_dtype(), torch.uint8),
                                         device="meta")
            return path, metas
    except (SafetensorError, OSError) as exc:
        raise fail(path, f"unreadable safetensors file ({exc})", "re-export the adapter") from None


def read_adapter(path, base: ModelArgs, max_rank: int | None = None, name: str | None = None) -> LoRAAdapter:
    """Read a PEFT LoRA adapter folder and check it against `base`; AdapterFileError names the file and cause."""
    folder = Path(path)
    settings = read_config(folder)
    return _parse(folder, settings, *_load_tensors(folder), base, max_rank, name)


def inspect_adapter(path, base: ModelArgs, max_rank: int | None = None, name: str | None = None) -> LoRAAdapter:
    """read_adapter's checks from adapter_config.json and the safetensors header only: the adapter's
    rank, scaling and targets, with meta tensors for weights (no data read, so thousands of folders are
    described in seconds). Values (NaN, infinities) are checked when the weights are read."""
    folder = Path(path)
    settings = read_config(folder)
    header = _header_tensors(folder)
    if header is None:
        return read_adapter(folder, base, max_rank, name)
    return _parse(folder, settings, *header, base, max_rank, name)


def _parse(folder: Path, settings: LoraSettings, weights_path: Path, tensors: dict[str, torch.Tensor],
           base: ModelArgs, max_rank: int | None, name: str | None) -> LoRAAdapter:
    """Check the tensors by key against the config and the base, and fold rank/alpha patterns in."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise fail(weights_path, f"unexpected tensor {key!r}: only lora_A / lora_B weights of Llama-family "
                                     "attention and MLP projections can be served",
                       "export the adapter without embeddings, lm_head, DoRA magnitudes or saved modules")
        layer, group, module, part = int(m[1]), m[2], m[3], m[4]
        if module in LORA_TARGETS and module_group(module) != group:
            raise fail(weights_path, f"tensor {key!r} puts {module} under {group}",
                       f"{module} lives under {module_group(module)} in Llama-family models")
        pairs.setdefault((layer, module), {})[part] = tensor
    if not pairs:
        raise fail(weights_path, "holds no LoRA tensors", "re-export the adapter")
    for layer in range(base.n_layers):
        for module in LORA_TARGETS:
            if settings.targets(layer, module) and (layer, module) not in pairs:
                raise fail(weights_path, f"layer {layer} {module}: target_modules selects it but it has no "
                                         "LoRA tensors", "the file is truncated or from another base; re-export it")
    ranks = {key: check_pair(*key, p.get("A"), p.get("B"), settings, base, weights_path, max_rank)
             for key, p in sorted(pairs.items())}
    top = max(ranks.values())
    weights = {}
    for (layer, module), rank in ranks.items():
        a, b = pairs[(layer, module)]["A"], pairs[(layer, module)]["B"]
        _, alpha = settings.rank_alpha(layer, module)
        ratio = settings.scaling_for(rank, alpha) / settings.scaling
        if ratio != 1.0:  # alpha_pattern / rank_pattern: fold this module's own scaling into B
            b = (b.float() * ratio).to(b.dtype)
        if rank < top:  # rank_pattern: zero rows of A and columns of B leave B @ A unchanged
            a = torch.cat([a, a.new_zeros(top - rank, a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], top - rank)], dim=1)
        weights[(layer, module)] = (a.contiguous(), b.contiguous())
    present = {module for _, module in weights}
    return LoRAAdapter(name=name or folder.name, path=str(folder), rank=top, alpha=settings.alpha,
                       scaling=settings.scaling, targets=tuple(m for m in LORA_TARGETS if m in present),
                       weights=weights)


def _targets_config(adapter: LoRAAdapter, n_layers: int | None) -> dict:
    """target_modules / layers_to_transform that select exactly the (layer, module) pairs of the adapter."""
    modules = sorted({m for _, m in adapter.weights})
    layers = sorted({i for i, _ in adapter.weights})
    if len(adapter.weights) == len(modules) * len(layers):  # a full grid: names plus, if needed, layers
        every = n_layers is not None and layers == list(range(n_layers))
        return {"target_modules": modules, "layers_to_transform": None if every else layers}
    alternatives = "|".join(re.escape(module_path(i, m)) for i, m in sorted(adapter.weights))
    return {"target_modules": f"(?:{alternatives})", "layers_to_transform": None}


def write_adapter(adapter: LoRAAdapter, path, base_model_name: str, n_layers: int | None = None,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write `adapter` as PEFT's save_pretrained does, so PeftModel.from_pretrained loads it; returns the folder.

    n_layers (the base's layer count) lets a full-depth adapter omit layers_to_transform; without it
    the config lists the adapter's layers, which PEFT reads the same way. metadata goes into the
    safetensors header next to PEFT's {"format": "pt"}.
    """
    folder = Path(path)
    for (layer, module), (a, b) in adapter.weights.items():
        if module not in LORA_TARGETS:
            raise ValueError(f"adapter {adapter.name!r}: module {module!r} is not one of {list(LORA_TARGETS)}")
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != adapter.rank or b.shape[1] != adapter.rank:
            raise ValueError(f"adapter {adapter.name!r}: layer {layer} {module} has A {tuple(a.shape)} and "
                             f"B {tuple(b.shape)}, expected A [rank={adapter.rank}, in] and B [out, {adapter.rank}]")
    if not adapter.weights:
        raise ValueError(f"adapter {adapter.name!r} has no weights to write")
    r = adapter.rank
    # PEFT recomputes scaling from r and lora_alpha: pick the pair that reproduces ours exactly
    if math.isclose(adapter.scaling, adapter.alpha / math.sqrt(r), rel_tol=1e-9) and not math.isclose(
            adapter.scaling, adapter.alpha / r, rel_tol=1e-9):
        alpha, rslora = adapter.alpha, True
    else:
        alpha, rslora = (adapter.alpha if math.isclose(adapter.scaling, adapter.alpha / r, rel_tol=1e-9)
                         else adapter.scaling * r), False
    config = {
        "alpha_pattern": {},
        "base_model_name_or_path": base_model_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": rslora,
        **_targets_config(adapter, n_layers),
    }
    tensors = {}
    for (layer, module), (a, b) in sorted(adapter.weights.items()):
        tensors[tensor_key(layer, module, "A")] = a.detach().to("cpu").contiguous()
        tensors[tensor_key(layer, module, "B")] = b.detach().to("cpu").contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    # write to temporary names and rename, so a crash never leaves a half-written adapter behind
    tmp_weights = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, tmp_weights, metadata={**(metadata or {}), "format": "pt"})
    tmp_config = folder / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    os.replace(tmp_config, folder / CONFIG_NAME)
    return folder
