"""The small interface every in-process engine implements, so one HTTP server fronts them all."""
from __future__ import annotations

import abc
import numbers
import time
from dataclasses import dataclass, field
from typing import ClassVar


class EngineError(RuntimeError):
    """An engine cannot do what was asked; the message says why and what to do."""


class AdapterNotFoundError(KeyError):
    """A request or call named an adapter that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a sentence
        return str(self.args[0]) if self.args else "adapter not found"


class AdapterFileError(ValueError):
    """An adapter folder or file is broken; the message names the path and the cause."""


# What the sampler can compute in float32: a temperature below MIN_TEMPERATURE turns logits / T into
# infinities (1e-40 is a float32 denormal), a top_p below MIN_TOP_P rounds to 0 in float32.
MIN_TEMPERATURE = 1e-5  # vLLM's sampling epsilon; 0 means greedy
MAX_TEMPERATURE = 100.0
MIN_TOP_P = 1e-8
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes a 64-bit unsigned seed
MAX_STOP_TOKEN_IDS = 64
DEFAULT_MAX_RUNNING = 256  # EngineConfig.max_num_seqs's default, for engines without a config


class ParamError(ValueError):
    """A sampling parameter the engine cannot honour; `param` names the request field (a 400 for the client)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """Per-request sampling; temperature 0 means greedy. Every value is checked against what the sampler
    computes (float32 logits, 64-bit generator seeds), so no request can fail a batch it shares."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        t, p = self.temperature, self.top_p
        checks = [
            ("max_tokens", _is_int(self.max_tokens) and self.max_tokens >= 1, "must be an integer >= 1"),
            ("temperature", isinstance(t, (int, float)) and (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE),
             f"must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"),
            ("top_p", isinstance(p, (int, float)) and MIN_TOP_P <= p <= 1.0, f"must be in [{MIN_TOP_P:g}, 1]"),
            ("top_k", _is_int(self.top_k) and self.top_k >= 0, "must be an integer >= 0 (0 disables it)"),
            ("seed", self.seed is None or (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED),
             "must be an integer in [0, 2**64 - 1]"),
            ("min_tokens", _is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens,
             "must be in [0, max_tokens]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ParamError(name, f"{name}={getattr(self, name)!r} {why}")
        ids = tuple(self.stop_token_ids)
        if len(ids) > MAX_STOP_TOKEN_IDS or not all(_is_int(i) and i >= 0 for i in ids):
            raise ParamError("stop_token_ids", f"stop_token_ids must be at most {MAX_STOP_TOKEN_IDS} integers "
                                               f">= 0, got {list(ids)[:8]!r}")
        self.stop_token_ids = tuple(int(i) for i in ids)

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids the engine can compare against: inside [0, vocab_size)."""
        outside = [i for i in self.stop_token_ids if i >= vocab_size]
        if outside:
            raise ParamError("stop_token_ids", f"stop_token_ids {outside[:5]} are outside the vocabulary "
                                               f"[0, {vocab_size})")


@dataclass
class Request:
    """One generation request as the engine sees it (token ids in, token ids out)."""

    request_id: str
    prompt_ids: list[int]
    adapter: str | None = None  # None: the base model
    params: SamplingParams = field(default_factory=SamplingParams)
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class StepOutput:
    """What one engine step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


def check_prompt(request: Request, adapters, vocab_size: int, max_model_len: int, model_name: str) -> list[int]:
    """The checks every engine makes on a new request; returns the prompt as a list of ints."""
    if request.adapter is not None and request.adapter not in adapters:
        raise AdapterNotFoundError(f"adapter {request.adapter!r} is not registered; "
                                   f"registered: {sorted(adapters)[:20]}")
    ids = [int(t) for t in request.prompt_ids]
    if not ids:
        raise ValueError("prompt_ids is empty; send at least one token")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"prompt_ids hold a token outside [0, {vocab_size}) of {model_name}")
    request.params.check_vocab(vocab_size)
    if len(ids) >= max_model_len:
        raise ValueError(f"prompt has {len(ids)} tokens; this engine takes at most {max_model_len - 1} "
                         "(max_model_len, capped by max_num_batched_tokens and the KV cache)")
    return ids


class Engine(abc.ABC):
    """Add requests, call step() until has_unfinished() is False, read stats().

    Engines are single-threaded: the server calls every method from one engine thread.
    """

    name: ClassVar[str]
    eos_token_id: int
    vocab_size: int
    max_model_len: int
    base_model_name: str

    @abc.abstractmethod
    def add_request(self, request: Request) -> None:
        """Queue a request. Raises AdapterNotFoundError or ValueError (prompt too long...)."""

    @abc.abstractmethod
    def abort(self, request_id: str) -> None:
        """Drop a request and free what it holds; unknown ids are ignored."""

    @abc.abstractmethod
    def step(self) -> list[StepOutput]:
        """Run one iteration (a prefill and/or decode batch) and return the new tokens."""

    @abc.abstractmethod
    def has_unfinished(self) -> bool:
        """True while any request is queued or running."""

    @abc.abstractmethod
    def stats(self) -> dict[str, float]:
        """Numbers for /metrics: queue_depth, running, batch_size, kv_blocks_used, kv_blocks_total,
        adapters_resident, adapter_loads, adapter_evictions, adapter_load_seconds, ..."""

    @abc.abstractmethod
    def register_adapter(self, name: str, path: str) -> None:
        """Make a PEFT adapter folder servable under `name` (AdapterFileError if broken)."""

    @abc.abstractmethod
    def unregister_adapter(self, name: str) -> None:
        """Remove an adapter (AdapterNotFoundError if unknown)."""

    @abc.abstractmethod
    def adapters(self) -> dict[str, str]:
        """Registered adapters: name -> folder."""

    def max_running(self) -> int:
        """Requests the engine runs at once (the server sizes its default queue from it)."""
        config = getattr(self, "config", None)
        return int(getattr(config, "max_num_seqs", DEFAULT_MAX_RUNNING))

    def close(self) -> None:
        """Release devices and threads."""
