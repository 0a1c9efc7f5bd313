"""The aiohttp application: routes, auth and error middleware, engine thread lifecycle."""
from __future__ import annotations

import asyncio
import hmac
import sys
import traceback
from typing import Awaitable, Callable

from aiohttp import web

from engines.base import Engine
from engines.server import admin, generation
from engines.server.engine_thread import EngineThread
from engines.server.protocol import ApiError
from engines.server.state import STATE, ServerOptions, ServerState
from engines.tokenizer import Tokenizer

GENERATION_PATHS = {"/v1/completions", "/v1/chat/completions", "/generate", "/generate_stream"}
ERROR_EVENT_WAIT_S = 5.0  # at shutdown, for handlers to send the error events of their streams
OPEN_PATHS = {"/health", "/metrics"}  # no API key needed (load balancers and scrapers)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves in the OpenAI error shape; generation requests are counted by status."""
    state = request.app[STATE]
    status = 500
    try:
        response = await _authorized(request, handler, state)
        status = response.status
    except ApiError as exc:
        status = exc.status
        return _error_response(exc)
    except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method, body too large
        status = exc.status
        if exc.status < 400:
            raise
        message = {404: f"no route {request.method} {request.path}",
                   405: f"method {request.method} is not allowed on {request.path}",
                   413: f"request body is larger than the limit of {state.options.max_body_bytes} bytes"}
        return _error_response(ApiError(exc.status, message.get(exc.status, exc.reason)))
    except asyncio.CancelledError:
        status = generation.CLIENT_CLOSED
        raise
    except Exception as exc:  # a bug must fail one request, never the server
        traceback.print_exc(file=sys.stderr)
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        if request.path in GENERATION_PATHS:
            state.metrics.requests[str(request.get(generation.OUTCOME, status))] += 1
    return response


async def _authorized(request: web.Request, handler: Handler, state: ServerState) -> web.StreamResponse:
    key = state.options.api_key
    if key and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
    return await handler(request)


async def _start_engine_thread(app: web.Application) -> None:
    state = app[STATE]
    state.thread = EngineThread(state.engine, asyncio.get_running_loop())
    state.thread.start()
    state.adapters = dict(await state.thread.call(lambda e: dict(e.adapters())))


async def _stop_engine_thread(app: web.Application) -> None:
    state = app[STATE]
    if state.thread is not None:
        await asyncio.get_running_loop().run_in_executor(None, state.thread.stop)


async def drain(app: web.Application, timeout_s: float, forced: asyncio.Event) -> None:
    """Shutdown: new requests get 503; those in flight get timeout_s (cut short by `forced`) to finish; then the
    engine thread stops and every request still open ends with a 'shutting down' error (an error event on a
    stream), so no client sees a stream cut without a reason."""
    state = app[STATE]
    state.draining = True

    def idle() -> bool:
        return state.metrics.in_flight == 0

    waiter = asyncio.ensure_future(state.wait_released(idle, timeout_s))
    cut = asyncio.ensure_future(forced.wait())
    await asyncio.wait([waiter, cut], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    cut.cancel()
    if state.thread is not None:
        await asyncio.get_running_loop().run_in_executor(None, state.thread.stop)
    await state.wait_released(idle, ERROR_EVENT_WAIT_S)


def build_app(engine: Engine, tokenizer: Tokenizer, options: ServerOptions | None = None) -> web.Application:
    """An app serving `engine`; the engine thread starts with the app and stops (not closing the engine) with it."""
    options = options or ServerOptions()
    app = web.Application(client_max_size=options.max_body_bytes, middlewares=[errors_middleware])
    app[STATE] = ServerState(engine=engine, tokenizer=tokenizer, options=options)
    generation.add_routes(app)
    admin.add_routes(app)
    app.on_startup.append(_start_engine_thread)
    app.on_cleanup.append(_stop_engine_thread)
    return app
