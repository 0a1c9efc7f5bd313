"""PeftEngine: the Hugging Face transformers + peft baseline, one adapter per batch, static batches with a HF KV cache."""
from __future__ import annotations

import inspect
from collections import deque
from dataclasses import dataclass, field

import torch

from engines.base import AdapterNotFoundError, Engine, EngineError, Request, StepOutput, check_prompt
from engines.config import EngineConfig

EXTRA_KEYS = {"attn_implementation": "transformers attention backend: sdpa (default) or eager"}


@dataclass
class _Seq:
    request: Request
    output: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def id(self) -> str:
        return self.request.request_id


@dataclass
class _Group:
    """Requests of one adapter prefilled together and decoded in lockstep (what HF generate does)."""

    adapter: str | None
    seqs: list[_Seq]
    cache: object = None  # the transformers Cache of the batch
    mask: torch.Tensor | None = None  # (B, T) attention mask: 0 for left padding
    positions: torch.Tensor | None = None  # (B,) position of each row's next token
    last: torch.Tensor | None = None  # (B, 1) each row's last token

    def active(self) -> list[_Seq]:
        return [s for s in self.seqs if not s.done]


def _shared_weights(config: EngineConfig, device: torch.device, dtype: torch.dtype):
    """The weights multilora and merged run: a checkpoint folder as stored; a preset's random weights drawn the
    way engines.model.llama.build_model draws them (on a GPU they are drawn there, so not random_state_dict's)."""
    from engines.model.checkpoint import resolve_model
    from engines.model.config import PRESETS, ModelArgs

    if config.model not in PRESETS or device.type == "cpu":  # on the CPU build_model uses random_state_dict too
        return resolve_model(config.model, seed=config.seed, dtype=dtype, device=device)
    args = ModelArgs.from_name(config.model)
    return args, runner_weights(args, config.seed, device, dtype)


def runner_weights(args, seed: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """engines.model.llama.build_model's random weights under Hugging Face names (views, copied by the loader)."""
    from engines.model.llama import build_model

    state = build_model(args, dtype, device, seed=seed).hf_state_dict()
    if args.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _build_hf_model(args, state_dict, device: torch.device, dtype: torch.dtype, attn: str):
    """LlamaForCausalLM / Qwen2ForCausalLM from ModelArgs.to_hf_config(), holding exactly `state_dict`."""
    import transformers

    hf = args.to_hf_config()
    hf["torch_dtype"] = hf["dtype"] = str(dtype).removeprefix("torch.")  # from_config honours it (v4: torch_dtype)
    cfg = transformers.AutoConfig.for_model(**hf)
    cfg._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the serving dtype: no float32 copy of an 8B model
    try:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(previous)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    allowed = {"lm_head.weight"} if args.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise EngineError(f"peft engine: weights do not fit {type(model).__name__}: missing "
                          f"{sorted(set(missing) - allowed)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if args.tie_embeddings:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


class PeftEngine(Engine):
    """Adapters loaded into one PeftModel; a batch holds requests of one adapter (set_adapter), the base model
    runs with the adapters disabled. A group of same-adapter requests is prefilled together (left padding) and
    decoded one token per step until all of them finish; the adapter of the oldest waiting request goes next."""

    name = "peft"

    def __init__(self, config: EngineConfig) -> None:
        unknown = sorted(set(config.extra) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"engine config: unknown extra key(s) {unknown} for peft; known: {EXTRA_KEYS}")
        self.config = config
        self.device = torch.device(config.resolved_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("engine config: device=cuda but torch sees no CUDA device; use device=cpu or auto")
        self.dtype = config.resolved_dtype()
        self.args, state = _shared_weights(config, self.device, self.dtype)
        self.model = _build_hf_model(self.args, state, self.device, self.dtype,
                                     config.extra.get("attn_implementation", "sdpa"))
        del state
        self._logits_kw = self._last_logits_only()
        self.eos_token_id = self.args.eos_token_id
        self.vocab_size = self.args.vocab_size
        self.max_model_len = min(config.max_model_len, self.args.max_seq_len)
        self.base_model_name = config.model
        from engines.multilora.sampler import Sampler

        self.sampler = Sampler(self.device, config.seed)
        self.peft = None  # the PeftModel, once an adapter is loaded
        self._adapters: dict[str, tuple[str, str]] = {}  # name -> (folder, peft adapter key)
        self._keys = 0
        self._waiting: deque[_Seq] = deque()
        self._group: _Group | None = None
        self._pending: list[StepOutput] = []
        self._active_adapter: str | None = None  # what the PeftModel is set to
        self.steps = self.tokens_generated = self.adapter_loads = self.adapter_switches = 0
        self.last_batch_size = 0
        if config.adapters:
            from engines.adapters.peft_format import adapter_folders
            for folder in adapter_folders(config.adapters):
                self.register_adapter(folder.name, str(folder))

    def _last_logits_only(self) -> dict[str, int]:
        """transformers >= 4.50 calls it logits_to_keep, 4.45-4.49 num_logits_to_keep: skip the prompt's logits."""
        params = inspect.signature(self.model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                return {name: 1}
        return {}

    # ---- adapters --------------------------------------------------------------------------------
    def register_adapter(self, name: str, path: str) -> None:
        import peft

        from engines.adapters.peft_format import read_adapter

        if not name or "/" in name:
            raise ValueError(f"adapter name {name!r} must be non-empty and contain no '/'")
        if name in self._adapters:
            raise ValueError(f"adapter {name!r} is already registered; unregister it first")
        read_adapter(path, self.args, max_rank=self.config.max_lora_rank, name=name)  # clear errors first
        key = f"adapter{self._keys}"  # peft module keys may not hold '.', user names may
        self._keys += 1
        if self.peft is None:
            self.peft = peft.PeftModel.from_pretrained(self.model, str(path), adapter_name=key)
            self.peft.eval()
        else:
            self.peft.load_adapter(str(path), adapter_name=key)
        self._active_adapter = None  # loading may change the active adapter: set it again before use
        self._adapters[name] = (str(path), key)
        self.adapter_loads += 1

    def unregister_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise AdapterNotFoundError(f"adapter {name!r} is not registered")
        for seq in [s for s in self._waiting if s.request.adapter == name]:
            self._waiting.remove(seq)
            self._fail(seq, f"adapter {name!r} was unregistered")
        if self._group is not None and self._group.adapter == name:
            for seq in self._group.active():
                seq.done = True
                self._fail(seq, f"adapter {name!r} was unregistered")
            self._group = None
        _, key = self._adapters.pop(name)
        self.peft.delete_adapter(key)
        self._active_adapter = None

    def adapters(self) -> dict[str, str]:
        return {name: path for name, (path, _) in self._adapters.items()}

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        ids = check_prompt(request, self._adapters, self.vocab_size, self.max_model_len, self.base_model_name)
        if any(s.id == request.request_id for s in self._all()):
            raise ValueError(f"request_id {request.request_id!r} is already in flight")
        request.prompt_ids = ids
        self._waiting.append(_Seq(request))

    def _all(self) -> list[_Seq]:
        return list(self._waiting) + (self._group.active() if self._group else [])

    def abort(self, request_id: str) -> None:
        for seq in self._waiting:
            if seq.id == request_id:
                self._waiting.remove(seq)
                break
        if self._group is not None:
            for seq in self._group.active():
                if seq.id == request_id:
                    seq.done = True
            if not self._group.active():
                self._group = None  # frees the KV cache
        self.sampler.forget(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._waiting) or self._group is not None or bool(self._pending)

    def _fail(self, seq: _Seq, message: str) -> None:
        self.sampler.forget(seq.id)
        self._pending.append(StepOutput(seq.id, [], True, "error", len(seq.request.prompt_ids),
                                        len(seq.output), message))

    # ---- the loop --------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        outputs, self._pending = self._pending, []
        try:
            if self._group is None and self._waiting:
                self._group = self._next_group()
                outputs += self._prefill(self._group)
            elif self._group is not None:
                outputs += self._decode(self._group)
        except Exception:
            self._group = None  # its cache is unusable; the caller fails its requests
            raise
        if self._group is not None and not self._group.active():
            self._group = None
        self.steps += 1
        return outputs

    def _next_group(self) -> _Group:
        """The oldest waiting request's adapter, with as many of its waiting requests as the limits allow."""
        adapter = self._waiting[0].request.adapter
        picked: list[_Seq] = []
        longest = 0
        for seq in list(self._waiting):
            if seq.request.adapter != adapter or len(picked) >= self.config.max_num_seqs:
                continue
            n = len(seq.request.prompt_ids)
            if picked and max(longest, n) * (len(picked) + 1) > self.config.max_num_batched_tokens:
                continue  # left padding makes a prefill cost rows x longest prompt
            picked.append(seq)
            longest = max(longest, n)
            self._waiting.remove(seq)
        return _Group(adapter, picked)

    def _use_adapter(self, adapter: str | None) -> None:
        if adapter is not None and self._active_adapter != adapter:
            self.peft.set_adapter(self._adapters[adapter][1])
            self._active_adapter = adapter
            self.adapter_switches += 1

    def _forward(self, group: _Group, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        self._use_adapter(group.adapter)
        kwargs = dict(input_ids=input_ids, attention_mask=group.mask, position_ids=position_ids, use_cache=True,
                      **self._logits_kw)
        if group.cache is None:
            from transformers import DynamicCache

            group.cache = DynamicCache()  # explicit: 4.45-4.47 would hand back the legacy tuple format
        kwargs["past_key_values"] = group.cache
        with torch.inference_mode():
            if group.adapter is None and self._adapters:  # base: LoRA off (no adapters: nothing to turn off)
                with self.peft.disable_adapter():
                    out = self.model(**kwargs)
            else:
                out = self.model(**kwargs)
        group.cache = out.past_key_values
        return out.logits[:, -1, :].float()  # (B, V)

    def _prefill(self, group: _Group) -> list[StepOutput]:
        prompts = [s.request.prompt_ids for s in group.seqs]
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every row's last token sits in the last column
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        group.mask = mask.to(self.device)
        positions = (group.mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        group.positions = positions[:, -1] + 1
        return self._sample(group, self._forward(group, ids.to(self.device), positions))

    def _decode(self, group: _Group) -> list[StepOutput]:
        ones = torch.ones(len(group.seqs), 1, dtype=group.mask.dtype, device=self.device)
        group.mask = torch.cat([group.mask, ones], dim=1)
        logits = self._forward(group, group.last, group.positions[:, None])
        group.positions = group.positions + 1
        return self._sample(group, logits)

    def _sample(self, group: _Group, logits: torch.Tensor) -> list[StepOutput]:
        rows = [i for i, s in enumerate(group.seqs) if not s.done]
        active = [group.seqs[i] for i in rows]
        self.last_batch_size = len(group.seqs)
        picked = self.sampler(logits[rows], [s.id for s in active], [s.request.params for s in active],
                              [self._banned(s) for s in active]) if rows else []
        last = group.last if group.last is not None else torch.zeros(len(group.seqs), 1, dtype=torch.long,
                                                                      device=self.device)
        outs = []
        for row, seq, tok in zip(rows, active, picked):
            seq.output.append(tok)
            last[row, 0] = tok
            self.tokens_generated += 1
            reason = self._stop_reason(seq, tok)
            if reason is not None:
                seq.done = True
                self.sampler.forget(seq.id)
            outs.append(StepOutput(seq.id, [tok], reason is not None, reason, len(seq.request.prompt_ids),
                                   len(seq.output)))
        group.last = last
        return outs

    def _banned(self, seq: _Seq) -> tuple[int, ...]:
        p = seq.request.params
        if len(seq.output) >= p.min_tokens:
            return ()
        return p.stop_token_ids + (() if p.ignore_eos else (self.eos_token_id,))

    def _stop_reason(self, seq: _Seq, tok: int) -> str | None:
        p = seq.request.params
        if len(seq.output) >= p.min_tokens:
            if (tok == self.eos_token_id and not p.ignore_eos) or tok in p.stop_token_ids:
                return "stop"
        if len(seq.output) >= p.max_tokens or len(seq.request.prompt_ids) + len(seq.output) >= self.max_model_len:
            return "length"
        return None

    def stats(self) -> dict[str, float]:
        group = self._group
        return {
            "queue_depth": len(self._waiting),
            "running": len(group.active()) if group else 0,
            "batch_size": self.last_batch_size if group else 0,
            "kv_tokens": int(group.mask.numel()) if group is not None and group.mask is not None else 0,
            "adapters_registered": len(self._adapters),
            "adapters_resident": len(self._adapters),  # every adapter stays in the PeftModel on the device
            "adapter_loads": self.adapter_loads,
            "adapter_switches": self.adapter_switches,
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
        }

    def close(self) -> None:
        self._waiting.clear()
        self._group = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
