"""Non-generation routes: /v1/models, /health, /metrics, /v1/load_lora_adapter, /v1/unload_lora_adapter."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from engines.server.engine_thread import status_for
from engines.server.generation import read_body
from engines.server.protocol import ApiError, parse_adapter_load
from engines.server.state import STATE, ServerState

STATS_TIMEOUT_S = 5.0  # /metrics falls back to the last stats when a long step holds the engine thread


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    created = int(time.time())
    base = state.base_name
    data = [{"id": base, "object": "model", "created": created, "owned_by": "lora-fleet", "root": base,
             "parent": None, "max_model_len": state.engine.max_model_len}]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "lora-fleet", "root": path,
              "parent": base} for name, path in sorted(state.adapters.items())]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.thread is None or not state.thread.is_alive():
        raise ApiError(503, "the engine thread is not running")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        stats = await asyncio.wait_for(state.thread.call(lambda e: dict(e.stats())), STATS_TIMEOUT_S)
        state.last_stats = stats
    except asyncio.TimeoutError:
        stats = state.last_stats
    return web.Response(text=state.metrics.render(stats), content_type="text/plain", charset="utf-8",
                        headers={"X-Prometheus-Format": "0.0.4"})


def _adapter_path(state: ServerState, lora_path: str) -> Path:
    """The adapter folder a load request names, refused unless it lies under --adapter-root."""
    root_opt = state.options.adapter_root
    if root_opt is None:
        raise ApiError(403, "loading adapters at run time is off; start the server with --adapter-root DIR "
                            "(or --adapters DIR) to allow folders under DIR", param="lora_path")
    root = Path(root_opt).resolve()
    given = Path(lora_path)
    resolved = (given if given.is_absolute() else root / given).resolve()
    if resolved != root and root not in resolved.parents:
        raise ApiError(403, f"'lora_path' {lora_path!r} is outside the adapter root {str(root)!r}",
                       param="lora_path", code="path_not_allowed")
    if not resolved.is_dir():
        raise ApiError(404, f"'lora_path' {lora_path!r} is not an adapter folder under the adapter root",
                       param="lora_path")
    return resolved


async def load_adapter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name, lora_path = parse_adapter_load(await read_body(request), need_path=True)
    path = _adapter_path(state, lora_path)
    if name in state.adapters or name == state.base_name:
        raise ApiError(400, f"'lora_name' {name!r} is already served; unload it first or pick another name",
                       param="lora_name")
    try:
        await state.thread.call(lambda e: e.register_adapter(name, str(path)))
    except Exception as exc:
        raise ApiError(status_for(exc), f"cannot load adapter {name!r} from {lora_path!r}: {exc}",
                       param="lora_path") from exc
    state.adapters[name] = str(path)
    return web.json_response({"status": "ok", "lora_name": name, "lora_path": str(path),
                              "message": f"Success: LoRA adapter '{name}' added successfully."})


async def unload_adapter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name, _ = parse_adapter_load(await read_body(request), need_path=False)
    if name not in state.adapters:
        raise ApiError(404, f"adapter {name!r} is not loaded (see GET /v1/models)", param="lora_name")
    try:
        await state.thread.call(lambda e: e.unregister_adapter(name))
    except Exception as exc:
        raise ApiError(status_for(exc), f"cannot unload adapter {name!r}: {exc}", param="lora_name") from exc
    del state.adapters[name]
    return web.json_response({"status": "ok", "lora_name": name,
                              "message": f"Success: LoRA adapter '{name}' removed successfully."})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/load_lora_adapter", load_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_adapter)
