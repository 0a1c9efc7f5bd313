"""A table of bad requests: each gets its 4xx in the OpenAI error shape, and the server then answers a good one."""
from __future__ import annotations

import pytest

from tests.test_server import http_json
from tests.test_server_support import echo_server, make_adapter_dirs

KEY = {"Authorization": "Bearer k3y"}
GOOD = {"model": "echo-base", "prompt": "ok", "max_tokens": 3}


def comp(**fields):
    return {**GOOD, **fields}


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


CHAT = {"model": "echo-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

# (id, method, path, body (dict or raw bytes), headers, expected status, expected "param" or None)
CASES = [
    ("malformed-json", "POST", "/v1/completions", b'{"model": "echo-base", "prompt": ', KEY, 400, None),
    ("body-not-object", "POST", "/v1/completions", b"[1, 2]", KEY, 400, None),
    ("missing-prompt", "POST", "/v1/completions", without("prompt"), KEY, 400, "prompt"),
    ("missing-model", "POST", "/v1/completions", without("model"), KEY, 400, "model"),
    ("prompt-wrong-type", "POST", "/v1/completions", comp(prompt=42), KEY, 400, "prompt"),
    ("prompt-mixed-list", "POST", "/v1/completions", comp(prompt=[1, "a"]), KEY, 400, "prompt"),
    ("empty-prompt", "POST", "/v1/completions", comp(prompt=""), KEY, 400, "prompt"),
    ("empty-token-list", "POST", "/v1/completions", comp(prompt=[]), KEY, 400, "prompt"),
    ("token-id-outside-vocab", "POST", "/v1/completions", comp(prompt=[5, 99999]), KEY, 400, "prompt"),
    ("negative-max-tokens", "POST", "/v1/completions", comp(max_tokens=-5), KEY, 400, "max_tokens"),
    ("zero-max-tokens", "POST", "/v1/completions", comp(max_tokens=0), KEY, 400, "max_tokens"),
    ("huge-max-tokens", "POST", "/v1/completions", comp(max_tokens=10**12), KEY, 400, "max_tokens"),
    ("max-tokens-string", "POST", "/v1/completions", comp(max_tokens="5"), KEY, 400, "max_tokens"),
    ("max-tokens-bool", "POST", "/v1/completions", comp(max_tokens=True), KEY, 400, "max_tokens"),
    ("prompt-longer-than-context", "POST", "/v1/completions", comp(prompt="x" * 100), KEY, 400, "prompt"),
    ("top-p-above-one", "POST", "/v1/completions", comp(top_p=1.5), KEY, 400, "top_p"),
    ("top-p-zero", "POST", "/v1/completions", comp(top_p=0), KEY, 400, "top_p"),
    ("negative-temperature", "POST", "/v1/completions", comp(temperature=-1), KEY, 400, "temperature"),
    ("top-k-below-minus-one", "POST", "/v1/completions", comp(top_k=-3), KEY, 400, "top_k"),
    ("stop-wrong-type", "POST", "/v1/completions", comp(stop=7), KEY, 400, "stop"),
    ("stop-list-of-ints", "POST", "/v1/completions", comp(stop=[1, 2]), KEY, 400, "stop"),
    ("min-tokens-above-max", "POST", "/v1/completions", comp(min_tokens=9), KEY, 400, "min_tokens"),
    ("ignore-eos-not-bool", "POST", "/v1/completions", comp(ignore_eos="yes"), KEY, 400, "ignore_eos"),
    ("logprobs-unsupported", "POST", "/v1/completions", comp(logprobs=3), KEY, 400, "logprobs"),
    ("penalty-unsupported", "POST", "/v1/completions", comp(frequency_penalty=0.5), KEY, 400, "frequency_penalty"),
    ("n-above-one", "POST", "/v1/completions", comp(n=2), KEY, 400, "n"),
    ("stream-options-without-stream", "POST", "/v1/completions",
     comp(stream_options={"include_usage": True}), KEY, 400, "stream_options"),
    ("unknown-adapter", "POST", "/v1/completions", comp(model="no-such-adapter"), KEY, 404, "model"),
    ("unknown-base-colon-adapter", "POST", "/v1/completions", comp(model="echo-base:nope"), KEY, 404, "model"),
    ("chat-missing-messages", "POST", "/v1/chat/completions", {"model": "echo-base"}, KEY, 400, "messages"),
    ("chat-bad-role", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, KEY, 400, "messages[0].role"),
    ("chat-content-wrong-type", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": 5}]}, KEY, 400, "messages[0].content"),
    ("tgi-missing-inputs", "POST", "/generate", {"parameters": {}}, KEY, 400, "inputs"),
    ("tgi-unknown-adapter-id", "POST", "/generate",
     {"inputs": "x", "parameters": {"adapter_id": "ghost"}}, KEY, 404, "parameters.adapter_id"),
    ("load-path-traversal", "POST", "/v1/load_lora_adapter",
     {"lora_name": "evil", "lora_path": "../outside"}, KEY, 403, "lora_path"),
    ("load-absolute-path-outside-root", "POST", "/v1/load_lora_adapter",
     {"lora_name": "evil", "lora_path": "/etc"}, KEY, 403, "lora_path"),
    ("load-missing-name", "POST", "/v1/load_lora_adapter", {"lora_path": "delta"}, KEY, 400, "lora_name"),
    ("load-missing-folder", "POST", "/v1/load_lora_adapter",
     {"lora_name": "ghost", "lora_path": "ghost"}, KEY, 404, "lora_path"),
    ("load-broken-adapter", "POST", "/v1/load_lora_adapter",
     {"lora_name": "broken", "lora_path": "broken"}, KEY, 400, "lora_path"),
    ("unload-unknown", "POST", "/v1/unload_lora_adapter", {"lora_name": "ghost"}, KEY, 404, "lora_name"),
    ("oversized-body", "POST", "/v1/completions", comp(prompt="x" * 20000), KEY, 413, None),
    ("missing-api-key", "POST", "/v1/completions", GOOD, {}, 401, None),
    ("wrong-api-key", "POST", "/v1/completions", GOOD, {"Authorization": "Bearer nope"}, 401, None),
    ("unknown-route", "GET", "/v1/nothing-here", None, KEY, 404, None),
    ("wrong-method", "GET", "/v1/completions", None, KEY, 405, None),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    served_dir = make_adapter_dirs(base / "served", ["alpha"])
    root = make_adapter_dirs(base / "root", ["delta"])
    (root / "broken").mkdir()  # no adapter_config.json: the engine refuses it
    (base / "outside").mkdir()
    with echo_server(served_dir, adapter_root=str(root), api_key="k3y", max_body_bytes=16384) as (server, engine):
        yield server, engine


def test_table_has_at_least_fifteen_distinct_bad_requests():
    assert len({c[0] for c in CASES}) == len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_its_status_and_server_keeps_serving(served, case):
    server, engine = served
    _, method, path, body, headers, status, param = case
    got, payload = http_json(server.url, method, path, body, headers)
    assert got == status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    if param is not None:
        assert error["param"] == param, error
    ok, answer = http_json(server.url, "POST", "/v1/completions", GOOD, KEY)
    assert ok == 200 and answer["choices"][0]["text"] == "oko"
    assert not engine.has_unfinished()


def test_bad_requests_do_not_disturb_a_stream_in_flight():
    import concurrent.futures

    import openai

    with echo_server(step_delay_s=0.01) as (server, engine):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)
        stream = client.completions.create(model="echo-base", prompt="abc", max_tokens=50, stream=True)
        first = next(iter(stream))
        bad = [c for c in CASES if c[5] in (400, 404, 413) and not c[2].startswith("/v1/load")][:15]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda c: http_json(server.url, c[1], c[2], c[3], c[4])[0], bad))
        assert statuses == [c[5] for c in bad]
        text = first.choices[0].text + "".join(c.choices[0].text for c in stream)
        assert text == ("abc" * 17)[:50]  # every token of the stream arrived, in order
        assert not engine.has_unfinished()
