"""Request parsing and validation for the OpenAI and TGI routes; every failure is an ApiError naming the field."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from engines.base import MAX_SEED, MAX_STOP_TOKEN_IDS
from engines.tokenizer import chat_prompt


class ApiError(Exception):
    """An HTTP error in the OpenAI shape {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
             503: "server_overloaded", 507: "insufficient_storage", 500: "internal_server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code or str(self.status)}}


def show(value: Any) -> str:
    """A value for an error message, cut short (a body may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def bad(param: str, why: str) -> ApiError:
    return ApiError(400, f"'{param}' {why}", param=param)


@dataclass
class GenerationRequest:
    """A parsed completion, chat or TGI request, before the model name is resolved and the prompt tokenized."""

    kind: str  # "completion" | "chat" | "tgi"
    model: str  # as the client named it; "" on TGI routes (adapter_id picks the adapter)
    prompt: str | list[int]
    max_tokens: int | None  # None: the route's default
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields other than max_tokens
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    adapter_id: str | None = None  # TGI: parameters.adapter_id


MAX_ADAPTER_NAME = 200
MAX_JSON_DEPTH = 32  # deeper bodies are refused before anything walks them recursively


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _check_tree(body: Any) -> None:
    """Nesting depth and strings (lone surrogates cannot be tokenized or encoded), without recursion."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((k, depth) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ApiError(400, f"request body holds a string that is not valid Unicode ({exc.reason} at "
                                    f"character {exc.start}: a lone surrogate escape such as \\ud800)") from None


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else (malformed, NaN, too deep, huge integers, lone surrogates) is a 400."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, NaN, integers over 4300 digits
        raise ApiError(400, f"request body is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    _check_tree(body)
    return body


def _int(body: dict, key: str, default: int | None, lo: int | None = None,
         hi: int | None = None, name: str | None = None) -> int | None:
    name = name or key
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, got {type(value).__name__} {show(value)}")
    if lo is not None and value < lo:
        raise bad(name, f"must be >= {lo}, got {show(value)}")
    if hi is not None and value > hi:
        raise bad(name, f"must be <= {hi}, got {show(value)}")
    return value


def _float(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False,
           name: str | None = None) -> float:
    name = name or key
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, f"must be a number, got {type(value).__name__} {show(value)}")
    value = float(value)
    if value != value or value > hi or value < lo or (lo_open and value == lo):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise bad(name, f"must be in {interval}, got {show(value)}")
    return value


def _bool(body: dict, key: str, default: bool, name: str | None = None) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name or key, f"must be true or false, got {show(value)}")
    return value


def _stop(body: dict, key: str = "stop", name: str | None = None) -> list[str]:
    value = body.get(key)
    name = name or key
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad(name, f"must be a string or a list of strings, got {show(value)}")
    if any(s == "" for s in value):
        raise bad(name, "must not contain an empty string")
    if len(value) > 16:
        raise bad(name, f"may hold at most 16 strings, got {len(value)}")
    return value


def _model(body: dict) -> str:
    model = body.get("model")
    if model is None:
        raise bad("model", "is required (the base model or an adapter name; see GET /v1/models)")
    if not isinstance(model, str) or not model:
        raise bad("model", f"must be a non-empty string, got {show(model)}")
    return model


def _sampling(body: dict) -> dict[str, Any]:
    """OpenAI/vLLM sampling fields shared by completions and chat."""
    sampling = {
        "temperature": _float(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "top_k": _int(body, "top_k", 0, lo=-1),
        "seed": _int(body, "seed", None, lo=0, hi=MAX_SEED),
        "ignore_eos": _bool(body, "ignore_eos", False),
        "min_tokens": _int(body, "min_tokens", 0, lo=0),
    }
    if sampling["top_k"] == -1:  # vLLM spells "off" as -1
        sampling["top_k"] = 0
    ids = body.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad("stop_token_ids", f"must be a list of integers, got {show(ids)}")
        if len(ids) > MAX_STOP_TOKEN_IDS or any(i < 0 for i in ids):
            raise bad("stop_token_ids", f"must hold at most {MAX_STOP_TOKEN_IDS} ids >= 0")
        sampling["stop_token_ids"] = tuple(ids)
    n = _int(body, "n", 1)
    if n != 1:
        raise bad("n", f"must be 1 (one choice per request is supported), got {n}")
    return sampling


# fields a client may send only at their neutral value: anything else would be silently ignored
_NEUTRAL = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "best_of": (None, 1),
            "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "repetition_penalty": (None, 1),
            "logit_bias": (None, {}), "suffix": (None, ""), "tools": (None, []), "echo": (None, False)}


def _refuse_unsupported(body: dict) -> None:
    for key, neutral in _NEUTRAL.items():
        value = body.get(key)
        if value is None or any(value == n and isinstance(value, bool) == isinstance(n, bool) for n in neutral):
            continue
        raise bad(key, f"is {show(value)}, which this server does not support; leave it out "
                       f"(supported: max_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids, "
                       "ignore_eos, min_tokens, stream, stream_options)")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("response_format", f"is {show(fmt)}; only {{'type': 'text'}} is supported")


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad("stream_options", f"must be an object, got {show(options)}")
    if not stream:
        raise bad("stream_options", "is only allowed with stream=true")
    return stream, _bool(options, "include_usage", False, name="stream_options.include_usage")


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    model = _model(body)
    if "prompt" not in body:
        raise bad("prompt", "is required (a string or a list of token ids)")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one, as the openai client sends it
    if isinstance(prompt, str):
        if not prompt:
            raise bad("prompt", "must not be empty")
    elif isinstance(prompt, list):
        if not prompt:
            raise bad("prompt", "must not be empty")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad("prompt", "must be a string or a list of integer token ids (one prompt per request)")
    else:
        raise bad("prompt", f"must be a string or a list of token ids, got {type(prompt).__name__}")
    stream, include_usage = _stream_flags(body)
    _refuse_unsupported(body)
    return GenerationRequest(kind="completion", model=model, prompt=prompt,
                             max_tokens=_int(body, "max_tokens", None, lo=1), sampling=_sampling(body),
                             stop=_stop(body), stream=stream, include_usage=include_usage)


def _message_text(i: int, message: Any) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad(where, f"must be an object with role and content, got {show(message)}")
    role = message.get("role")
    if role not in ("system", "user", "assistant", "developer", "tool"):
        raise bad(f"{where}.role", f"must be system, user, assistant, developer or tool, got {show(role)}")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text parts are understood
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{j}]", "must be a text part {\"type\": \"text\", \"text\": ...}")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad(f"{where}.content", f"must be a string or a list of text parts, got {show(content)}")
    return {"role": role, "content": content}


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    model = _model(body)
    messages = body.get("messages")
    if messages is None:
        raise bad("messages", "is required (a list of {role, content})")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", f"must be a non-empty list, got {show(messages)}")
    parsed = [_message_text(i, m) for i, m in enumerate(messages)]
    if not any(m["content"] for m in parsed):
        raise bad("messages", "must hold some text; every content is empty")
    stream, include_usage = _stream_flags(body)
    _refuse_unsupported(body)
    max_tokens = _int(body, "max_completion_tokens", None, lo=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", None, lo=1)
    return GenerationRequest(kind="chat", model=model, prompt=chat_prompt(parsed), max_tokens=max_tokens,
                             sampling=_sampling(body), stop=_stop(body), stream=stream,
                             include_usage=include_usage)


def parse_tgi(body: dict[str, Any], stream: bool) -> GenerationRequest:
    """TGI's /generate and /generate_stream: {"inputs": str, "parameters": {...}}."""
    inputs = body.get("inputs")
    if inputs is None:
        raise bad("inputs", "is required (the prompt text)")
    if not isinstance(inputs, str) or not inputs:
        raise bad("inputs", f"must be a non-empty string, got {show(inputs)}")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad("parameters", f"must be an object, got {show(params)}")
    do_sample = _bool(params, "do_sample", False, name="parameters.do_sample")
    temperature = _float(params, "temperature", 1.0, 0.0, 100.0, lo_open=True, name="parameters.temperature")
    top_p = params.get("top_p")
    sampling = {
        # TGI samples only when asked (do_sample, or a temperature/top_p/top_k given); greedy otherwise
        "temperature": temperature if (do_sample or "temperature" in params or top_p is not None
                                       or params.get("top_k")) else 0.0,
        "top_p": _float(params, "top_p", 1.0, 0.0, 1.0, lo_open=True, name="parameters.top_p"),
        "top_k": _int(params, "top_k", 0, lo=0, name="parameters.top_k") or 0,
        "seed": _int(params, "seed", None, lo=0, hi=MAX_SEED, name="parameters.seed"),
        "ignore_eos": False,
        "min_tokens": 0,
    }
    adapter_id = params.get("adapter_id")
    if adapter_id is not None and (not isinstance(adapter_id, str) or not adapter_id):
        raise bad("parameters.adapter_id", f"must be a non-empty string, got {show(adapter_id)}")
    return GenerationRequest(kind="tgi", model="", prompt=inputs,
                             max_tokens=_int(params, "max_new_tokens", 20, lo=1, name="parameters.max_new_tokens"),
                             sampling=sampling, stop=_stop(params, "stop", name="parameters.stop"),
                             stream=stream, adapter_id=adapter_id)


def parse_adapter_load(body: dict[str, Any], need_path: bool) -> tuple[str, str | None]:
    """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter body: lora_name (+ lora_path)."""
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        raise bad("lora_name", f"is required as a non-empty string, got {show(name)}")
    if len(name) > MAX_ADAPTER_NAME or any(c in name for c in ":/\\") or name.strip() != name:
        raise bad("lora_name", f"must be at most {MAX_ADAPTER_NAME} characters without ':', '/', '\\' or "
                               f"surrounding spaces, got {show(name)}")
    path = body.get("lora_path")
    if need_path and (not isinstance(path, str) or not path):
        raise bad("lora_path", f"is required as a non-empty string, got {show(path)}")
    return name, path
