"""Non-generation routes: /v1/models, /health, /metrics, /v1/load_lora_adapter, /v1/unload_lora_adapter."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from engines.adapters.peft_format import check_inside
from engines.base import AdapterFileError
from engines.hostmem import available_bytes
from engines.server.engine_thread import status_for
from engines.server.generation import read_body
from engines.server.protocol import ApiError, parse_adapter_load, show
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


def _runtime_lora(state: ServerState) -> Path:
    """The folder runtime loads must lie under; 403 unless the server was started with --enable-runtime-lora."""
    if not state.options.runtime_lora:
        raise ApiError(403, "loading and unloading adapters at run time is off; start the server with "
                            "--enable-runtime-lora (and --adapter-root DIR or --adapters DIR)", code="runtime_lora_off")
    if state.options.adapter_root is None:
        raise ApiError(403, "runtime adapter loading has no folder to load from; start the server with "
                            "--adapter-root DIR (or --adapters DIR)", code="runtime_lora_off")
    return Path(state.options.adapter_root).resolve()


def _adapter_path(root: Path, lora_path: str) -> Path:
    """The adapter folder a load request names, refused unless it and every file in it lie under root."""
    given = Path(lora_path)
    resolved = (given if given.is_absolute() else root / given).resolve()
    if resolved != root and root not in resolved.parents:
        raise ApiError(403, f"'lora_path' {show(lora_path)} is outside the adapter root {str(root)!r}",
                       param="lora_path", code="path_not_allowed")
    if not resolved.is_dir():
        raise ApiError(404, f"'lora_path' {show(lora_path)} is not an adapter folder under the adapter root",
                       param="lora_path")
    try:
        check_inside(resolved, root)
    except AdapterFileError as exc:
        raise ApiError(403, str(exc), param="lora_path", code="path_not_allowed") from None
    return resolved


def _check_room(state: ServerState, name: str, path: Path) -> None:
    """The count and host-memory caps of runtime loading."""
    cap = state.options.max_runtime_loras
    if len(state.runtime_loaded) >= cap:
        raise ApiError(409, f"{cap} adapters are already loaded at run time (--max-runtime-loras); unload one "
                            f"before loading {name!r}", param="lora_name", code="too_many_adapters")
    need = 2 * sum(f.stat().st_size for f in path.iterdir() if f.is_file())  # the file and its unpacked copy
    free = available_bytes()
    if free is not None and need > free // 2:
        raise ApiError(507, f"loading {name!r} needs about {need / 2**20:.0f} MiB of host memory and only "
                            f"{free / 2**20:.0f} MiB are available", param="lora_path", code="out_of_memory")


async def load_adapter(request: web.Request) -> web.Response:
    """One load per name at a time: a second load of a name being loaded gets the first one's answer (same
    folder) or 409 (another folder)."""
    state = request.app[STATE]
    root = _runtime_lora(state)
    name, lora_path = parse_adapter_load(await read_body(request), need_path=True)
    path = _adapter_path(root, lora_path)
    running = state.loading.get(name)
    if running is not None:
        other, result = running
        if other != path:
            raise ApiError(409, f"adapter {name!r} is being loaded from another folder; retry once it is done",
                           param="lora_name", code="load_in_progress")
        return _loaded(name, path, await asyncio.shield(result))
    if name in state.adapters or name == state.base_name:
        raise ApiError(400, f"'lora_name' {name!r} is already served; unload it first or pick another name",
                       param="lora_name")
    _check_room(state, name, path)
    result: asyncio.Future = asyncio.get_running_loop().create_future()
    state.loading[name] = (path, result)
    try:
        await state.thread.call(lambda e: e.register_adapter(name, str(path)))
    except Exception as exc:
        error = ApiError(status_for(exc), f"cannot load adapter {name!r} from {show(lora_path)}: {exc}",
                         param="lora_path")
        result.set_result(error)
        raise error from exc
    else:
        state.adapters[name] = str(path)
        state.runtime_loaded.add(name)
        result.set_result(None)
    finally:
        del state.loading[name]
    return _loaded(name, path, None)


def _loaded(name: str, path: Path, error: ApiError | None) -> web.Response:
    if error is not None:
        raise error
    return web.json_response({"status": "ok", "lora_name": name, "lora_path": str(path),
                              "message": f"Success: LoRA adapter '{name}' added successfully."})


async def unload_adapter(request: web.Request) -> web.Response:
    """Stops new requests for the adapter, waits (at most --unload-wait-s) for those in flight, then unloads."""
    state = request.app[STATE]
    _runtime_lora(state)
    name, _ = parse_adapter_load(await read_body(request), need_path=False)
    if name not in state.adapters:
        raise ApiError(404, f"adapter {name!r} is not loaded (see GET /v1/models)", param="lora_name")
    if name in state.unloading:
        raise ApiError(409, f"adapter {name!r} is being unloaded by another request", param="lora_name",
                       code="unload_in_progress")
    state.unloading.add(name)
    try:
        if not await state.wait_released(lambda: state.in_use[name] == 0, state.options.unload_wait_s):
            raise ApiError(409, f"adapter {name!r} still serves {state.in_use[name]} request(s) after "
                                f"{state.options.unload_wait_s:g} s; retry later", param="lora_name",
                           code="adapter_in_use")
        try:
            await state.thread.call(lambda e: e.unregister_adapter(name))
        except Exception as exc:
            raise ApiError(status_for(exc), f"cannot unload adapter {name!r}: {exc}", param="lora_name") from exc
    finally:
        state.unloading.discard(name)
    del state.adapters[name]
    state.runtime_loaded.discard(name)
    return web.json_response({"status": "ok", "lora_name": name,
                              "message": f"Success: LoRA adapter '{name}' removed successfully."})



def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/load_lora_adapter", load_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_adapter)
