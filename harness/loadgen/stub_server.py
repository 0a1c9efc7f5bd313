"""A minimal OpenAI-style streaming server (no model): the target of load-generator tests and its benchmark.

`python -m harness.loadgen.stub_server --port 0 [--ttft-ms 5] [--token-delay-ms 2] [--chunk-tokens 1]`
prints `READY http://127.0.0.1:PORT` like engines.server and streams `max_tokens` tokens per request.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class StubConfig:
    ttft_ms: float = 5.0  # delay before the first chunk
    token_delay_ms: float = 2.0  # delay between chunks
    chunk_tokens: int = 1  # tokens per SSE chunk (>1 exercises the ITL chunk rule)
    send_token_ids: bool = False  # put token_ids in each chunk (else the client infers counts)
    fail_every: int = 0  # every Nth request answers HTTP 500 (0: never)
    max_running: int = 0  # streams beyond this many answer 503 + Retry-After, as a full queue does (0: no limit)
    model: str = "stub"
    adapters: tuple[str, ...] = ()  # when given, other model names answer 404


@dataclass
class StubState:
    requests: int = 0
    running: int = 0
    ok: int = 0
    errors: int = 0
    output_tokens: int = 0
    started: float = field(default_factory=time.monotonic)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": status}}, status=status)


def build_app(cfg: StubConfig) -> web.Application:
    state = StubState()
    app = web.Application()

    async def completions(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        try:
            body = await request.json()
        except ValueError:
            state.errors += 1
            return _error(400, "body is not JSON")
        model, n = body.get("model"), body.get("max_tokens", 16)
        if not isinstance(n, int) or n < 1:
            state.errors += 1
            return _error(400, f"max_tokens={n!r} must be an integer >= 1")
        if cfg.adapters and model not in cfg.adapters and model != cfg.model:
            state.errors += 1
            return _error(404, f"model {model!r} not found")
        if cfg.fail_every and state.requests % cfg.fail_every == 0:
            state.errors += 1
            return _error(500, "stub: injected failure")
        if cfg.max_running and state.running >= cfg.max_running:
            state.errors += 1
            return web.json_response({"error": {"message": "stub: queue full", "type": "server_overloaded",
                                                "param": None, "code": "queue_full"}}, status=503,
                                     headers={"Retry-After": "1"})
        prompt = body.get("prompt", [])
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt).encode())
        if not body.get("stream"):
            await asyncio.sleep((cfg.ttft_ms + cfg.token_delay_ms * (n - 1)) / 1000)
            state.ok += 1
            state.output_tokens += n
            return web.json_response({"object": "text_completion", "model": model,
                                      "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": n_prompt, "completion_tokens": n,
                                                "total_tokens": n_prompt + n}})
        state.running += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await asyncio.sleep(cfg.ttft_ms / 1000)
            sent = 0
            while sent < n:
                k = min(cfg.chunk_tokens, n - sent)
                choice = {"index": 0, "text": "x" * k, "finish_reason": "length" if sent + k == n else None}
                if cfg.send_token_ids:
                    choice["token_ids"] = [120] * k
                await resp.write(b"data: " + json.dumps({"object": "text_completion", "model": model,
                                                        "choices": [choice]}).encode() + b"\n\n")
                sent += k
                if sent < n and cfg.token_delay_ms > 0:
                    await asyncio.sleep(cfg.token_delay_ms / 1000)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
                await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            state.ok += 1
            state.output_tokens += n
        finally:
            state.running -= 1
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.Response:
        data = [{"id": cfg.model, "object": "model"}] + [{"id": a, "object": "model", "parent": cfg.model}
                                                         for a in cfg.adapters]
        return web.json_response({"object": "list", "data": data})

    async def metrics(request: web.Request) -> web.Response:
        lines = [f"lora_fleet_requests_total{{status=\"ok\"}} {state.ok}",
                 f"lora_fleet_requests_total{{status=\"error\"}} {state.errors}",
                 f"lora_fleet_running {state.running}",
                 f"lora_fleet_output_tokens_total {state.output_tokens}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(cfg: StubConfig, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(cfg), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f"READY http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.loadgen.stub_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft-ms", type=float, default=StubConfig.ttft_ms)
    p.add_argument("--token-delay-ms", type=float, default=StubConfig.token_delay_ms)
    p.add_argument("--chunk-tokens", type=int, default=StubConfig.chunk_tokens)
    p.add_argument("--send-token-ids", action="store_true")
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--max-running", type=int, default=0, help="streams beyond this many get 503 (0: no limit)")
    p.add_argument("--model", default=StubConfig.model)
    p.add_argument("--adapters", default="", help="comma-separated adapter names (others get 404)")
    a = p.parse_args(argv)
    if a.chunk_tokens < 1 or a.ttft_ms < 0 or a.token_delay_ms < 0 or a.fail_every < 0 or a.max_running < 0:
        p.error("--chunk-tokens must be >= 1 and the delays, --fail-every and --max-running >= 0")
    cfg = StubConfig(ttft_ms=a.ttft_ms, token_delay_ms=a.token_delay_ms, chunk_tokens=a.chunk_tokens,
                     send_token_ids=a.send_token_ids, fail_every=a.fail_every, max_running=a.max_running,
                     model=a.model,
                     adapters=tuple(x for x in a.adapters.split(",") if x))
    try:
        asyncio.run(serve(cfg, a.host, a.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
