"""The small interface every in-process engine implements, so one HTTP server fronts them all."""
from __future__ import annotations

import abc
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


@dataclass
class SamplingParams:
    """Per-request sampling; temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be in [0, 100]"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 disables it)"),
            ("min_tokens", 0 <= self.min_tokens <= self.max_tokens, "must be in [0, max_tokens]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {why}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)


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

    def close(self) -> None:
        """Release devices and threads."""
