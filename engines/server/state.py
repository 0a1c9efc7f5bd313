"""What the route handlers share: options, the engine thread, the tokenizer, the adapter table and counters."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from engines.base import Engine
from engines.server.engine_thread import EngineThread
from engines.server.metrics import ServerMetrics
from engines.server.protocol import ApiError
from engines.tokenizer import Tokenizer


@dataclass
class ServerOptions:
    max_queue: int | None = None  # admitted requests (queued + running) beyond which new ones get 503
    api_key: str | None = None  # when set, /v1/* and /generate* need "Authorization: Bearer KEY"
    adapter_root: str | None = None  # load_lora_adapter paths must lie under it (None: runtime loading off)
    max_body_bytes: int = 8 << 20  # larger request bodies get 413
    model_aliases: tuple[str, ...] = ()  # other names of the base model (e.g. the --model spec)

    def __post_init__(self) -> None:
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError(f"server: max_queue={self.max_queue} must be >= 1 (or omitted for no limit)")
        if self.max_body_bytes < 1024:
            raise ValueError(f"server: max_body_bytes={self.max_body_bytes} must be >= 1024")
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

    @property
    def base_name(self) -> str:
        return self.engine.base_model_name

    def resolve_adapter(self, model: str | None, param: str = "model") -> str | None:
        """The adapter a model name selects: an adapter name (vLLM), base:adapter (Ray Serve), or None for the base."""
        base_names = {self.base_name, *self.options.model_aliases}
        if model is None or model in base_names:
            return None
        if model in self.adapters:
            return model
        if ":" in model:
            base, adapter = model.split(":", 1)
            if base in base_names and adapter in self.adapters:
                return adapter
        raise ApiError(404, f"model {model!r} does not exist; this server serves the base model "
                            f"{self.base_name!r} and {len(self.adapters)} adapter(s) (see GET /v1/models)",
                       param=param, code="model_not_found")


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)
