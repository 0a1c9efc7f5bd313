"""A deterministic fake engine (echo) and helpers to run the server around it in tests."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from engines.base import AdapterFileError, AdapterNotFoundError, Engine, Request, StepOutput
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.server.app import build_app
from engines.server.runner import ServerThread
from engines.server.state import ServerOptions
from engines.tokenizer import ByteTokenizer

BOOM = "BOOM"  # a prompt containing this makes the next step raise (the engine-failure path)


class EchoEngine(Engine):
    """One token per request per step: the base echoes the prompt's bytes, an adapter spells its own name.

    Serves the `tiny` preset's vocabulary with a context of `max_model_len` (EngineConfig, capped at 64 here
    so 'prompt longer than the context' is cheap to test). extra["step_delay_s"] slows each step.
    """

    name = "echo"

    def __init__(self, config: EngineConfig) -> None:
        args = ModelArgs.from_name("tiny")
        self.eos_token_id = args.eos_token_id
        self.bos_token_id = args.bos_token_id
        self.vocab_size = args.vocab_size
        self.max_model_len = min(config.max_model_len, 64)
        self.base_model_name = config.model
        self.delay = float(config.extra.get("step_delay_s", 0.0))
        self.register_delay = float(config.extra.get("register_delay_s", 0.0))
        self.registrations = 0
        self._adapters: dict[str, str] = {}
        self._live: dict[str, tuple[Request, int]] = {}  # id -> (request, tokens produced)
        self.aborted: list[str] = []
        self.steps = 0
        self._fail_next = False
        if config.adapters:
            for sub in sorted(Path(config.adapters).iterdir()):
                self.register_adapter(sub.name, str(sub))

    def add_request(self, request: Request) -> None:
        if request.adapter is not None and request.adapter not in self._adapters:
            raise AdapterNotFoundError(f"adapter {request.adapter!r} is not registered")
        if bytes(t for t in request.prompt_ids if t < 256).find(BOOM.encode()) >= 0:
            self._fail_next = True
        self._live[request.request_id] = (request, 0)

    def abort(self, request_id: str) -> None:
        if self._live.pop(request_id, None) is not None:
            self.aborted.append(request_id)

    def _token(self, req: Request, i: int) -> int:
        if req.adapter is not None:
            name = req.adapter.encode()
            return name[i % len(name)]
        body = [t for t in req.prompt_ids if t < 256] or [ord("x")]
        return body[i % len(body)]

    def step(self) -> list[StepOutput]:
        self.steps += 1
        if self.delay:
            time.sleep(self.delay)
        if self._fail_next:
            self._fail_next = False
            raise RuntimeError("simulated device failure")
        outs = []
        for rid, (req, n) in list(self._live.items()):
            tok = self._token(req, n)
            n += 1
            done = n >= req.params.max_tokens
            self._live[rid] = (req, n)
            if done:
                del self._live[rid]
            outs.append(StepOutput(rid, [tok], finished=done, finish_reason="length" if done else None,
                                   prompt_tokens=len(req.prompt_ids), output_tokens=n))
        return outs

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def stats(self) -> dict[str, float]:
        return {"queue_depth": 0, "running": len(self._live), "batch_size": len(self._live),
                "kv_blocks_used": len(self._live), "kv_blocks_total": 128,
                "adapters_resident": len(self._adapters), "steps": self.steps}

    def register_adapter(self, name: str, path: str) -> None:
        time.sleep(self.register_delay)  # a slow load: concurrent loads of one name overlap it
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterFileError(f"{path}: adapter_config.json is missing")
        if name in self._adapters:
            raise ValueError(f"adapter {name!r} is already registered")
        self._adapters[name] = path
        self.registrations += 1

    def unregister_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise AdapterNotFoundError(f"adapter {name!r} is not registered")
        del self._adapters[name]

    def adapters(self) -> dict[str, str]:
        return dict(self._adapters)


def make_adapter_dirs(root: Path, names: list[str]) -> Path:
    """Folders that EchoEngine accepts as adapters (it reads only adapter_config.json's presence)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).mkdir(exist_ok=True)
        (root / name / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return root


@contextlib.contextmanager
def echo_server(adapters: Path | None = None, **options):
    """An EchoEngine behind the HTTP server on 127.0.0.1 and a free port; always stopped."""
    extra = {key: options.pop(key) for key in ("step_delay_s", "register_delay_s") if key in options}
    engine = EchoEngine(EngineConfig(model="echo-base", adapters=str(adapters) if adapters else None,
                                     extra=extra))
    app = build_app(engine, ByteTokenizer(ModelArgs.from_name("tiny")), ServerOptions(**options))
    server = ServerThread(app).start()
    try:
        yield server, engine
    finally:
        server.stop()
