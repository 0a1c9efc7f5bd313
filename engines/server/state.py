"""What the route handlers share: options, the engine thread, the tokenizer, the adapter table and counters."""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from engines.base import Engine
from engines.server.engine_thread import EngineThread
from engines.server.metrics import ServerMetrics
from engines.server.protocol import ApiError, show
from engines.tokenizer import Tokenizer


QUEUE_PER_RUNNING_SLOT = 2  # default --max-queue: twice the requests the engine runs at once
RETRY_AFTER_S = 1


@dataclass
class ServerOptions:
    max_queue: int | None = None  # admitted requests (queued + running) beyond which new ones get 503;
    #                                None: QUEUE_PER_RUNNING_SLOT x the engine's max running; 0: no limit
    api_key: str | None = None  # when set, /v1/* and /generate* need "Authorization: Bearer KEY"
    adapter_root: str | None = None  # load_lora_adapter paths must lie under it
    runtime_lora: bool = False  # /v1/load_lora_adapter and /v1/unload_lora_adapter answer (else 403)
    max_runtime_loras: int = 64  # adapters loaded at run time, at most
    unload_wait_s: float = 30.0  # an unload waits this long for the adapter's requests, then 409
    drain_s: float = 30.0  # on SIGTERM, requests in flight get this long before their streams are ended
    max_body_bytes: int = 8 << 20  # larger request bodies get 413
    model_aliases: tuple[str, ...] = ()  # other names of the base model (e.g. the --model spec)

    def __post_init__(self) -> None:
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError(f"server: max_queue={self.max_queue} must be >= 1 (0: no limit; omitted: sized "
                             "from the engine)")
        if self.max_body_bytes < 1024:
            raise ValueError(f"server: max_body_bytes={self.max_body_bytes} must be >= 1024")
        if self.max_runtime_loras < 1 or self.unload_wait_s < 0 or self.drain_s < 0:
            raise ValueError("server: max_runtime_loras must be >= 1, unload_wait_s and drain_s >= 0")
        if self.adapter_root is not None and not Path(self.adapter_root).is_dir():
            raise ValueError(f"server: adapter_root {self.adapter_root!r} is not a folder")


@dataclass
class ServerState:
    engine: Engine
    tokenizer: Tokenizer
    options: ServerOptions
    thread: EngineThread | None = None  # set on startup, when the event loop exists
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder, mirrored from the engine
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    last_stats: dict[str, float] = field(default_factory=dict)
    draining: bool = False  # SIGTERM: new generation requests get 503
    in_use: Counter = field(default_factory=Counter)  # adapter -> generation requests in flight
    unloading: set[str] = field(default_factory=set)  # adapters being unloaded: new requests get 404
    loading: dict[str, tuple[Path, asyncio.Future]] = field(default_factory=dict)  # name -> (folder, outcome)
    runtime_loaded: set[str] = field(default_factory=set)  # adapters loaded through the API
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever a request ends

    @property
    def queue_limit(self) -> int | None:
        limit = self.options.max_queue
        if limit is None:
            return QUEUE_PER_RUNNING_SLOT * self.engine.max_running()
        return limit or None

    def admit(self) -> None:
        """503 with Retry-After while draining or when the queue is full; the client may retry."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": str(RETRY_AFTER_S)})
        limit = self.queue_limit
        if limit is not None and self.metrics.in_flight >= limit:
            self.metrics.rejected += 1
            raise ApiError(503, f"the server's queue is full ({limit} requests in flight, --max-queue); retry later",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})

    def hold(self, adapter: str | None) -> None:
        if adapter is not None:
            self.in_use[adapter] += 1

    def release(self, adapter: str | None) -> None:
        if adapter is not None:
            self.in_use[adapter] -= 1
            if self.in_use[adapter] <= 0:
                del self.in_use[adapter]
        self.released.set()

    async def wait_released(self, done, timeout_s: float) -> bool:
        """Wait until done() holds, waking at each request's end; False if timeout_s passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.released.clear()
            try:
                await asyncio.wait_for(self.released.wait(), left)
            except asyncio.TimeoutError:
                return done()
        return True

    @property
    def base_name(self) -> str:
        return self.engine.base_model_name

    def resolve_adapter(self, model: str | None, param: str = "model") -> str | None:
        """The adapter a model name selects: an adapter name (vLLM), base:adapter (Ray Serve), or None for the base."""
        base_names = {self.base_name, *self.options.model_aliases}
        if model is None or model in base_names:
            return None
        if model in self.adapters and model not in self.unloading:
            return model
        if ":" in model:
            base, adapter = model.split(":", 1)
            if base in base_names and adapter in self.adapters and adapter not in self.unloading:
                return adapter
        raise ApiError(404, f"model {show(model)} does not exist; this server serves the base model "
                            f"{self.base_name!r} and {len(self.adapters)} adapter(s) (see GET /v1/models)",
                       param=param, code="model_not_found")


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)
