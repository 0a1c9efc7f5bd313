"""Checks of a PEFT LoRA config and its tensors against a base model; every failure is an AdapterFileError."""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex
import torch

from engines.base import AdapterFileError
from engines.model.config import LORA_TARGETS, ModelArgs

ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
CONFIG_FILE = "adapter_config.json"


def module_group(module: str) -> str:
    """The Hugging Face submodule that holds a projection: self_attn or mlp."""
    return "self_attn" if module in ATTN_MODULES else "mlp"


def module_path(layer: int, module: str) -> str:
    """A projection's name inside LlamaForCausalLM, the name PEFT matches its patterns against."""
    return f"model.layers.{layer}.{module_group(module)}.{module}"


# Patterns in adapter configs are the uploader's regexes: matched by the `regex` package with a time limit, so
# a crafted one ((.*){1,300}x and the like) costs at most PATTERN_BUDGET_S per adapter, summed over every
# module it is matched against, instead of stalling the engine thread.
PATTERN_BUDGET_S = 0.2
MAX_PATTERN_CHARS = 2000  # generated configs list every module path: long, but not megabytes


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str, full: bool) -> regex.Pattern:
    """target_modules as a string: a full match; rank/alpha_pattern keys: PEFT's (.*\\.)?(key)$."""
    return regex.compile(pattern if full else rf"(.*\.)?({pattern})$")


def pattern_matches(pattern: str, key: str, full: bool, where: str, budget: list[float]) -> bool:
    """Whether an adapter config's pattern selects a module path, spending from budget[0] (seconds left for
    this adapter's patterns); AdapterFileError, naming `where`, once the budget is spent."""
    start = time.perf_counter()
    try:
        compiled = _compiled(pattern, full)
        found = (compiled.fullmatch if full else compiled.match)(key, timeout=max(budget[0], 1e-3))
    except TimeoutError:
        found = None
        budget[0] = 0.0
    else:
        budget[0] -= time.perf_counter() - start
    if budget[0] <= 0:
        raise AdapterFileError(f"{where} regex {pattern[:80]!r}: matching the module names took longer than "
                               f"{PATTERN_BUDGET_S:g} s (catastrophic backtracking); write a simpler pattern or "
                               "list the module names")
    return found is not None


def check_pattern(pattern: str, full: bool, path: Path, key: str) -> None:
    """A config pattern that does not compile or is absurdly long is refused with the file and key."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise fail(path, f"{key} regex is {len(pattern)} characters long (at most {MAX_PATTERN_CHARS})",
                   "list the module names instead")
    try:
        _compiled(pattern, full)
    except regex.error as exc:
        raise fail(path, f"{key} regex {pattern[:80]!r} does not compile ({exc})", "fix adapter_config.json") from None


def fail(path: Path | str, cause: str, todo: str) -> AdapterFileError:
    """An AdapterFileError whose message reads '<path>: <cause>; <what to do>'."""
    return AdapterFileError(f"{path}: {cause}; {todo}")


# Config values we cannot serve, with the value that we can: key -> (accepted values, what to do).
_UNSUPPORTED = {
    "use_dora": ((False, None), "DoRA adapters are not supported: use a plain LoRA adapter (use_dora false)"),
    "fan_in_fan_out": ((False, None), "fan_in_fan_out is for GPT-2 Conv1D layers; Llama-family adapters have it false"),
    "bias": (("none", None), "LoRA biases are not supported: train with bias='none'"),
    "lora_bias": ((False, None), "LoRA biases are not supported: train with lora_bias=False"),
    "modules_to_save": ((None, []), "fully trained extra modules (modules_to_save) cannot be served "
                                    "from a shared base: retrain without them or merge the adapter"),
    "task_type": (("CAUSAL_LM", None), "only causal-LM adapters can be served: task_type must be CAUSAL_LM"),
}


@dataclass(frozen=True)
class LoraSettings:
    """The parts of adapter_config.json that decide which tensors exist and how they scale."""

    r: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...] | str  # names (suffix match) or one regex (full match), as in PEFT
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    base_model_name: str | None
    layers_to_transform: tuple[int, ...] | None = None  # None: every layer
    source: str = CONFIG_FILE  # the config file, named when a pattern misbehaves
    budget: list[float] = field(default_factory=lambda: [PATTERN_BUDGET_S], compare=False, repr=False)

    def scaling_for(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    @property
    def scaling(self) -> float:
        return self.scaling_for(self.r, self.alpha)

    def rank_alpha(self, layer: int, module: str) -> tuple[int, float]:
        """This module's rank and alpha after rank_pattern / alpha_pattern, matched exactly as PEFT does."""
        key = module_path(layer, module)
        r = next((v for k, v in self.rank_pattern.items()
                  if pattern_matches(k, key, False, f"{self.source}: rank_pattern", self.budget)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items()
                      if pattern_matches(k, key, False, f"{self.source}: alpha_pattern", self.budget)), self.alpha)
        return r, alpha

    def targets(self, layer: int, module: str) -> bool:
        """Whether target_modules selects this projection (PEFT: regex full match, else name or suffix)."""
        key = module_path(layer, module)
        if isinstance(self.target_modules, str):
            return pattern_matches(self.target_modules, key, True, f"{self.source}: target_modules", self.budget)
        if self.layers_to_transform is not None and layer not in self.layers_to_transform:
            return False
        return any(key == t or key.endswith("." + t) for t in self.target_modules)


def _positive_int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(path, f"{key}={value!r} must be a positive integer", "fix adapter_config.json")
    return value


def _number(value: Any, key: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(path, f"{key}={value!r} must be a finite number", "fix adapter_config.json")
    return float(value)


def check_config(cfg: Any, path: Path) -> LoraSettings:
    """Parse a loaded adapter_config.json; `path` is the file, named in every error."""
    if not isinstance(cfg, dict):
        raise fail(path, f"the top level is a {type(cfg).__name__}, not a JSON object",
                   "write the config as PEFT does (LoraConfig.save_pretrained)")
    if cfg.get("peft_type") != "LORA":
        raise fail(path, f"peft_type={cfg.get('peft_type')!r} is not 'LORA'",
                   "only LoRA adapters can be served; give a PEFT LoRA adapter folder")
    for key, (accepted, todo) in _UNSUPPORTED.items():
        if cfg.get(key) not in accepted:
            raise fail(path, f"{key}={cfg.get(key)!r} is not supported", todo)
    r = _positive_int(cfg.get("r"), "r", path)
    alpha = _number(cfg.get("lora_alpha", 8), "lora_alpha", path)
    use_rslora = cfg.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise fail(path, f"use_rslora={use_rslora!r} must be true or false", "fix adapter_config.json")
    targets = cfg.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        unknown = sorted(t for t in targets if t.rsplit(".", 1)[-1] not in LORA_TARGETS)
        if unknown:
            raise fail(path, f"target_modules {unknown} are not LoRA-targetable linear layers of a Llama-family "
                             f"model (known: {list(LORA_TARGETS)})",
                       "serve adapters on attention and MLP projections only (no embeddings or lm_head)")
        targets = tuple(targets)
    elif isinstance(targets, str):
        check_pattern(targets, True, path, "target_modules")
    else:
        raise fail(path, f"target_modules={targets!r} must be a non-empty list of module names or a regex",
                   "list the projections, e.g. [\"q_proj\", \"v_proj\"]")
    patterns = {}
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = cfg.get(key) or {}
        if not isinstance(pattern, dict):
            raise fail(path, f"{key}={pattern!r} must be an object of pattern -> value", "fix adapter_config.json")
        read = _positive_int if key == "rank_pattern" else _number
        patterns[key] = {str(k): read(v, f"{key}[{str(k)[:80]!r}]", path) for k, v in pattern.items()}
        for k in patterns[key]:
            check_pattern(k, False, path, key)
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if layers is not None and not (isinstance(layers, list)
                                   and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise fail(path, f"layers_to_transform={layers!r} must be a layer index or a list of them",
                   "fix adapter_config.json")
    base = cfg.get("base_model_name_or_path")
    return LoraSettings(r=r, alpha=alpha, use_rslora=use_rslora, target_modules=targets,
                        rank_pattern=patterns["rank_pattern"], alpha_pattern=patterns["alpha_pattern"],
                        base_model_name=base if isinstance(base, str) else None,
                        layers_to_transform=tuple(layers) if layers else None, source=str(path))


def check_pair(layer: int, module: str, a: torch.Tensor | None, b: torch.Tensor | None,
               settings: LoraSettings, base: ModelArgs, path: Path, max_rank: int | None) -> int:
    """Check one (A, B) pair against the config and the base; returns its rank."""
    where = f"layer {layer} {module}"
    if module not in LORA_TARGETS:
        raise fail(path, f"{where}: unknown target module {module!r} (known: {list(LORA_TARGETS)})",
                   "serve adapters on attention and MLP projections only")
    if not 0 <= layer < base.n_layers:
        raise fail(path, f"{where}: layer index {layer} is beyond the base model {base.name!r}, which has "
                         f"{base.n_layers} layers", "use the base model this adapter was trained for")
    if not settings.targets(layer, module):
        raise fail(path, f"{where}: tensors exist for a module that target_modules={settings.target_modules!r} "
                         "does not select", "make target_modules and the tensors agree")
    for part, t in (("lora_A", a), ("lora_B", b)):
        if t is None:
            raise fail(path, f"{where}: {part} weight is missing", "every LoRA module needs both A and B")
        if not t.is_floating_point() or t.dim() != 2:
            raise fail(path, f"{where}: {part} is {t.dtype} with shape {tuple(t.shape)}, not a 2-d float matrix",
                       "save float16, bfloat16 or float32 matrices")
    fin, fout = base.module_shapes()[module]
    rank, _ = settings.rank_alpha(layer, module)
    if a.shape[0] != rank:
        raise fail(path, f"{where}: lora_A has rank {a.shape[0]} but the config says r={rank}",
                   "make r (or rank_pattern) match the saved tensors")
    if max_rank is not None and rank > max_rank:
        raise fail(path, f"{where}: rank {rank} is above max_rank={max_rank}",
                   "raise max_lora_rank / max_rank, or use an adapter of lower rank")
    if a.shape[1] != fin:
        raise fail(path, f"{where}: lora_A has in_features {a.shape[1]} but {base.name!r} has {fin}",
                   "use the base model this adapter was trained for")
    if tuple(b.shape) != (fout, rank):
        raise fail(path, f"{where}: lora_B has shape {tuple(b.shape)}, expected (out_features={fout}, r={rank}) "
                         f"for {base.name!r}", "use the base model this adapter was trained for")
    for part, t in (("lora_A", a), ("lora_B", b)):
        if not t.is_meta and not bool(torch.isfinite(t).all()):  # meta: described from a header, no values
            raise fail(path, f"{where}: {part} contains NaN or infinite values",
                       "the adapter is corrupt or its training diverged; retrain or re-export it")
    return rank
