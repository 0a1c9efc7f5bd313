"""Generation routes: /v1/completions, /v1/chat/completions, TGI /generate and /generate_stream."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from engines.base import ParamError, Request, SamplingParams, StepOutput
from engines.server.engine_thread import Admitted, Failed
from engines.server.protocol import ApiError, GenerationRequest, parse_chat, parse_completion, parse_json, parse_tgi
from engines.server.state import STATE, ServerState
from engines.server.streaming import ChunkEvents, TextStream, open_sse, send_done, send_event

# request key: the status a generation request ended with (for requests_total)
OUTCOME = web.RequestKey("outcome", int) if hasattr(web, "RequestKey") else "lora_fleet_outcome"
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


async def read_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"request body is larger than the server's limit of "
                            f"{request.app[STATE].options.max_body_bytes} bytes") from exc
    return parse_json(raw)


class _Job:
    """One admitted request: its engine id, the parsed request, and how its text is assembled."""

    def __init__(self, state: ServerState, gen: GenerationRequest, prompt_ids: list[int]) -> None:
        self.state = state
        self.gen = gen
        self.prompt_ids = prompt_ids
        self.id = ("chatcmpl-" if gen.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text = TextStream(state.tokenizer.stream_decoder(), gen.stop)
        self.sink: asyncio.Queue = asyncio.Queue()
        self.min_tokens = int(gen.sampling.get("min_tokens", 0))
        self.output_tokens = 0
        self.finish_reason: str | None = None
        self.done = False

    async def next(self) -> tuple[list[int], str]:
        """The next step's token ids and text delta; sets finish_reason when the request ends."""
        item = await self.sink.get()
        if isinstance(item, Failed):
            self.done = True
            raise ApiError(item.status, item.message)
        assert isinstance(item, StepOutput), item
        if item.finished and item.finish_reason == "error":
            self.done = True
            raise ApiError(500, item.error or "the engine failed this request")
        self.output_tokens = max(self.output_tokens + len(item.new_token_ids), item.output_tokens)
        delta = self.text.feed(item.new_token_ids, item.finished, check_stops=self.output_tokens >= self.min_tokens)
        if self.text.stopped:
            self.finish_reason = "stop"
            self.done = True
            self.state.thread.abort(self.id)  # the engine does not know stop strings: free its blocks now
        elif item.finished:
            self.finish_reason = item.finish_reason or "stop"
            self.done = True
        return item.new_token_ids, delta

    def usage(self) -> dict[str, int]:
        n_prompt = len(self.prompt_ids)
        return {"prompt_tokens": n_prompt, "completion_tokens": self.output_tokens,
                "total_tokens": n_prompt + self.output_tokens}


def _prepare(state: ServerState, gen: GenerationRequest) -> tuple[str | None, list[int], SamplingParams]:
    """Resolve the adapter, tokenize, check the context, build SamplingParams (ApiError on any problem)."""
    if gen.kind == "tgi":
        adapter = state.resolve_adapter(gen.adapter_id, param="parameters.adapter_id")
    else:
        adapter = state.resolve_adapter(gen.model)
    tok = state.tokenizer
    if isinstance(gen.prompt, str):
        prompt_ids = tok.encode(gen.prompt)
    else:
        prompt_ids = list(gen.prompt)
        vocab = state.engine.vocab_size
        bad_ids = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad_ids:
            raise ApiError(400, f"'prompt' holds token ids outside [0, {vocab}): {bad_ids[:5]}", param="prompt")
    context = state.engine.max_model_len
    if len(prompt_ids) >= context:
        raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens but this model's context is {context} "
                            "tokens (prompt + output must fit); shorten the prompt", param="prompt")
    room = context - len(prompt_ids)
    max_tokens = gen.max_tokens
    if max_tokens is None:
        max_tokens = room if gen.kind == "chat" else min(16, room)
    if max_tokens > room:
        raise ApiError(400, f"'max_tokens'={max_tokens} plus the prompt's {len(prompt_ids)} tokens exceeds the "
                            f"context of {context} tokens; ask for at most {room}", param="max_tokens")
    params = dict(gen.sampling)
    if params.get("min_tokens", 0) > max_tokens:
        raise ApiError(400, f"'min_tokens'={params['min_tokens']} must be <= max_tokens={max_tokens}",
                       param="min_tokens")
    try:
        sampling = SamplingParams(max_tokens=max_tokens, **params)
        sampling.check_vocab(state.engine.vocab_size)
    except ParamError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    return adapter, prompt_ids, sampling


def _completion_body(job: _Job) -> dict[str, Any]:
    if job.gen.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": job.text.text},
                  "logprobs": None, "finish_reason": job.finish_reason}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": job.text.text, "logprobs": None, "finish_reason": job.finish_reason}
        kind = "text_completion"
    return {"id": job.id, "object": kind, "created": job.created, "model": job.gen.model,
            "choices": [choice], "usage": job.usage()}


_TGI_REASONS = {"stop": "eos_token", "length": "length"}


def _tgi_details(job: _Job) -> dict[str, Any]:
    reason = "stop_sequence" if job.text.stopped else _TGI_REASONS.get(job.finish_reason or "", job.finish_reason)
    return {"finish_reason": reason, "generated_tokens": job.output_tokens, "prompt_tokens": len(job.prompt_ids)}


async def _stream(request: web.Request, job: _Job) -> web.StreamResponse:
    response = await open_sse(request)
    try:
        await _stream_events(response, job)
    except ApiError as exc:  # headers are sent: the error travels as an event
        request[OUTCOME] = exc.status
        try:
            await send_event(response, exc.body())
            await send_done(response)
        except ConnectionResetError:
            pass
    except ConnectionResetError:  # the client went away: _run's cleanup aborts the request
        request[OUTCOME] = CLIENT_CLOSED
        job.state.metrics.aborted_by_client += 1
    return response


async def _stream_events(response: web.StreamResponse, job: _Job) -> None:
    """One event per engine step output, then the usage chunk (when asked) and [DONE] (OpenAI routes)."""
    first, index = True, 0
    chunks = ChunkEvents(job.id, job.gen.kind, job.created, job.gen.model)
    while not job.done:
        ids, delta = await job.next()
        if job.gen.kind == "tgi":
            index += 1
            token = {"id": ids[-1] if ids else -1, "text": delta, "logprob": 0.0, "special": False}
            await send_event(response, {"index": index, "token": token,
                                        "generated_text": job.text.text if job.done else None,
                                        "details": _tgi_details(job) if job.done else None})
        else:  # OpenAI chunks, the per-token path of every benchmark: bytes spliced, no dict encoded
            await response.write(chunks.event(ids, delta, first, job.finish_reason if job.done else None))
        first = False
    if job.gen.include_usage:
        kind = "chat.completion.chunk" if job.gen.kind == "chat" else "text_completion"
        await send_event(response, {"id": job.id, "object": kind, "created": job.created,
                                    "model": job.gen.model, "choices": [], "usage": job.usage()})
    if job.gen.kind == "tgi":
        await response.write_eof()
    else:
        await send_done(response)


async def _run(request: web.Request, gen: GenerationRequest) -> web.StreamResponse:
    state = request.app[STATE]
    adapter, prompt_ids, params = _prepare(state, gen)
    state.admit()
    job = _Job(state, gen, prompt_ids)
    state.metrics.in_flight += 1
    state.hold(adapter)
    try:
        state.thread.add(Request(job.id, prompt_ids, adapter, params), job.sink)
        admitted = await job.sink.get()
        if isinstance(admitted, Failed):
            job.done = True
            raise ApiError(admitted.status, admitted.message)
        assert isinstance(admitted, Admitted), admitted
        state.metrics.prompt_tokens += len(prompt_ids)
        if gen.stream:
            response = await _stream(request, job)
        else:
            while not job.done:
                await job.next()
            body = {"generated_text": job.text.text, "details": _tgi_details(job)} if gen.kind == "tgi" \
                else _completion_body(job)
            response = web.json_response(body)
        return response
    except asyncio.CancelledError:  # the client disconnected (handler cancellation is on)
        request[OUTCOME] = CLIENT_CLOSED
        state.metrics.aborted_by_client += 1
        raise
    finally:
        state.metrics.in_flight -= 1
        state.release(adapter)
        state.metrics.output_tokens += job.output_tokens
        if not job.done:
            state.thread.abort(job.id)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _run(request, parse_completion(await read_body(request)))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _run(request, parse_chat(await read_body(request)))


async def tgi_generate(request: web.Request) -> web.StreamResponse:
    return await _run(request, parse_tgi(await read_body(request), stream=False))


async def tgi_generate_stream(request: web.Request) -> web.StreamResponse:
    return await _run(request, parse_tgi(await read_body(request), stream=True))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/generate", tgi_generate)
    app.router.add_post("/generate_stream", tgi_generate_stream)
