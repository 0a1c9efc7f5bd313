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
    # values the sampler cannot compute in float32 / int64 (they used to fail every request in flight)
    ("temperature-denormal", "POST", "/v1/completions", comp(temperature=1e-40), KEY, 400, "temperature"),
    ("top-p-below-float32", "POST", "/v1/completions", comp(temperature=0.7, top_p=1e-46), KEY, 400, "top_p"),
    ("seed-2**64", "POST", "/v1/completions", comp(seed=2**64), KEY, 400, "seed"),
    ("seed-negative", "POST", "/v1/completions", comp(seed=-1), KEY, 400, "seed"),
    ("seed-string", "POST", "/v1/completions", comp(seed="7"), KEY, 400, "seed"),
    ("stop-token-outside-vocab", "POST", "/v1/completions",
     comp(stop_token_ids=[999_999], min_tokens=1), KEY, 400, "stop_token_ids"),
    ("stop-token-10**30", "POST", "/v1/completions", comp(stop_token_ids=[10**30], min_tokens=1), KEY, 400,
     "stop_token_ids"),
    ("stop-token-negative", "POST", "/v1/completions", comp(stop_token_ids=[-1]), KEY, 400, "stop_token_ids"),
    ("stop-token-too-many", "POST", "/v1/completions", comp(stop_token_ids=list(range(65))), KEY, 400,
     "stop_token_ids"),
    ("stop-token-not-list", "POST", "/v1/completions", comp(stop_token_ids=3), KEY, 400, "stop_token_ids"),
    ("chat-temperature-denormal", "POST", "/v1/chat/completions", {**CHAT, "temperature": 1e-40}, KEY, 400,
     "temperature"),
    ("tgi-seed-2**64", "POST", "/generate", {"inputs": "x", "parameters": {"seed": 2**64}}, KEY, 400,
     "parameters.seed"),
    ("tgi-temperature-denormal", "POST", "/generate", {"inputs": "x", "parameters": {"temperature": 1e-40}}, KEY,
     400, "temperature"),
    # valid JSON that used to answer 500
    ("deeply-nested-array", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", KEY, 400, None),
    ("nested-past-depth-limit", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "user": ' + b"[" * 40 + b"]" * 40 + b"}", KEY, 400, None),
    ("int-of-5000-digits", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", KEY, 400, None),
    ("int-of-4000-digits", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "max_tokens": ' + b"9" * 4000 + b"}", KEY, 400, "max_tokens"),
    ("lone-surrogate-prompt", "POST", "/v1/completions", comp(prompt="ab\ud800cd"), KEY, 400, None),
    ("lone-surrogate-chat", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "\udfff"}]}, KEY, 400, None),
    ("lone-surrogate-key", "POST", "/v1/completions", {**GOOD, "\ud800": 1}, KEY, 400, None),
    ("lone-surrogate-stop", "POST", "/v1/completions", comp(stop=["\ud83d"]), KEY, 400, None),
    ("nan-literal", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "temperature": NaN}', KEY, 400, None),
    ("infinity-literal", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "top_p": -Infinity}', KEY, 400, None),
    ("float-overflowing-to-inf", "POST", "/v1/completions",
     b'{"model": "echo-base", "prompt": "x", "temperature": 1e400}', KEY, 400, "temperature"),
    ("invalid-utf8", "POST", "/v1/completions", b'{"model": "echo-base", "prompt": "\xff\xfe"}', KEY, 400, None),
    ("empty-body", "POST", "/v1/completions", b"", KEY, 400, None),
    ("body-null", "POST", "/v1/completions", b"null", KEY, 400, None),
    ("body-string", "POST", "/v1/completions", b'"hello"', KEY, 400, None),
    ("huge-model-name", "POST", "/v1/completions", comp(model="m" * 12000), KEY, 404, "model"),
    ("prompt-token-bool", "POST", "/v1/completions", comp(prompt=[1, True]), KEY, 400, "prompt"),
    ("max-tokens-float", "POST", "/v1/completions", comp(max_tokens=5.5), KEY, 400, "max_tokens"),
    ("top-k-string", "POST", "/v1/completions", comp(top_k="4"), KEY, 400, "top_k"),
    ("stream-not-bool", "POST", "/v1/completions", comp(stream="yes"), KEY, 400, "stream"),
    ("stop-seventeen-strings", "POST", "/v1/completions", comp(stop=["a"] * 17), KEY, 400, "stop"),
    ("stop-empty-string", "POST", "/v1/completions", comp(stop=[""]), KEY, 400, "stop"),
    ("response-format-json", "POST", "/v1/completions", comp(response_format={"type": "json_object"}), KEY,
     400, "response_format"),
    ("chat-empty-messages", "POST", "/v1/chat/completions", {**CHAT, "messages": []}, KEY, 400, "messages"),
    ("chat-image-part", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, KEY, 400,
     "messages[0].content[0]"),
    ("chat-max-completion-tokens-zero", "POST", "/v1/chat/completions", {**CHAT, "max_completion_tokens": 0},
     KEY, 400, "max_completion_tokens"),
    ("tgi-parameters-not-object", "POST", "/generate", {"inputs": "x", "parameters": [1]}, KEY, 400,
     "parameters"),
    ("tgi-max-new-tokens-zero", "POST", "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, KEY,
     400, "parameters.max_new_tokens"),
    # runtime adapter loading: names, paths and links
    ("load-name-too-long", "POST", "/v1/load_lora_adapter", {"lora_name": "n" * 300, "lora_path": "delta"}, KEY,
     400, "lora_name"),
    ("load-path-not-string", "POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": 5}, KEY, 400,
     "lora_path"),
    ("load-file-linking-outside", "POST", "/v1/load_lora_adapter",
     {"lora_name": "linked", "lora_path": "linked-file"}, KEY, 403, "lora_path"),
    ("load-folder-linking-outside", "POST", "/v1/load_lora_adapter",
     {"lora_name": "linked", "lora_path": "linked-dir"}, KEY, 403, "lora_path"),
    ("load-name-of-base", "POST", "/v1/load_lora_adapter", {"lora_name": "echo-base", "lora_path": "delta"}, KEY,
     400, "lora_name"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    served_dir = make_adapter_dirs(base / "served", ["alpha"])
    root = make_adapter_dirs(base / "root", ["delta"])
    (root / "broken").mkdir()  # no adapter_config.json: the engine refuses it
    (base / "outside").mkdir()
    make_adapter_dirs(base / "outside", ["elsewhere"])
    (root / "linked-file").mkdir()  # a folder inside the root whose config is a link to a file outside it
    (root / "linked-file" / "adapter_config.json").symlink_to(base / "outside" / "elsewhere" / "adapter_config.json")
    (root / "linked-dir").symlink_to(base / "outside" / "elsewhere", target_is_directory=True)
    with echo_server(served_dir, adapter_root=str(root), runtime_lora=True, api_key="k3y", max_body_bytes=16384) as (server, engine):
        yield server, engine


def test_table_has_at_least_eighty_distinct_bad_requests():
    assert len({c[0] for c in CASES}) == len(CASES) >= 80


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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_bad_requests_leave_memory_stable(served):
    """Three rounds of the whole table after a warm-up round: the server (in this process) does not grow."""
    server, engine = served

    def one_round() -> None:
        for _, method, path, body, headers, status, _param in CASES:
            assert http_json(server.url, method, path, body, headers)[0] == status
        assert http_json(server.url, "POST", "/v1/completions", GOOD, KEY)[1]["choices"][0]["text"] == "oko"

    one_round()
    before = _rss_bytes()
    for _ in range(3):
        one_round()
    assert _rss_bytes() - before < 16 << 20
    assert not engine.has_unfinished()
