"""The server around the real engines (multilora, merged, peft): same greedy tokens over HTTP, disconnects free KV."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from engines.adapters.synth import make_adapters
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.registry import create_engine
from engines.server.app import build_app
from engines.server.metrics import parse_prometheus
from engines.server.runner import ServerThread
from engines.server.state import ServerOptions
from engines.tokenizer import get_tokenizer
from tests.test_server import http_json, wait_until

PROMPTS = [[256, 11, 22, 33, 44], [256, 200, 100, 50, 25, 12, 6, 3], "Hello, adapters!"]
MODELS = ["tiny", "adapter-0000", "adapter-0001", "tiny:adapter-0002"]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv-adapters")
    make_adapters(ModelArgs.from_name("tiny"), 3, [4, 8, 16], ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                  root)
    return root


def _serve(engine_name: str, adapter_dir, **options) -> tuple[ServerThread, object]:
    engine = create_engine(EngineConfig(engine=engine_name, model="tiny", adapters=str(adapter_dir), device="cpu"))
    app = build_app(engine, get_tokenizer("tiny"), ServerOptions(model_aliases=("tiny",), **options))
    return ServerThread(app).start(), engine


def _greedy_tokens(url: str) -> dict[tuple[int, str], list[int]]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    out = {}
    for i, prompt in enumerate(PROMPTS):
        for model in MODELS:
            chunks = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stream=True,
                                               extra_body={"ignore_eos": True})
            out[(i, model)] = [t for c in chunks for t in c.choices[0].token_ids]
    return out


def test_all_engines_give_the_same_greedy_tokens_over_http(adapter_dir):
    results = {}
    for name in ("multilora", "merged", "peft"):
        server, engine = _serve(name, adapter_dir)
        try:
            results[name] = _greedy_tokens(server.url)
        finally:
            server.stop()
            engine.close()
    assert all(len(t) == 8 for t in results["multilora"].values())
    assert results["peft"] == results["multilora"] == results["merged"]
    for i in range(len(PROMPTS)):  # the adapters are really applied
        assert len({tuple(results["multilora"][(i, m)]) for m in MODELS}) > 1


def test_multilora_disconnect_mid_stream_frees_kv_blocks_and_runtime_load_works(adapter_dir, tmp_path):
    make_adapters(ModelArgs.from_name("tiny"), 1, [8], ["q_proj", "v_proj"], tmp_path, prefix="late-")
    server, engine = _serve("multilora", adapter_dir, adapter_root=str(tmp_path))
    try:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "adapter-0001", "prompt": [256] + [7] * 300, "max_tokens": 1500, "stream": True,
             "ignore_eos": True}), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.readline().startswith(b"data:")
        in_use = parse_prometheus(http_json(server.url, "GET", "/metrics")[1])["lora_fleet_kv_blocks_used"]
        assert in_use > 0
        resp.close()
        conn.close()
        assert wait_until(lambda: parse_prometheus(http_json(server.url, "GET", "/metrics")[1])
                          ["lora_fleet_kv_blocks_used"] == 0)
        status, body = http_json(server.url, "POST", "/v1/load_lora_adapter",
                                 {"lora_name": "late", "lora_path": "late-0000"})
        assert status == 200, body
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        out = client.completions.create(model="late", prompt=[256, 1, 2], max_tokens=3, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3
    finally:
        server.stop()
        engine.close()


@pytest.mark.e2e
def test_harness_serve_prints_ready_and_stops_on_sigterm(adapter_dir):
    cmd = [sys.executable, "-m", "harness", "serve", "--engine", "multilora", "--model", "tiny",
           "--adapters", str(adapter_dir), "--port", "0", "--max-queue", "4",
           "--engine-config", json.dumps({"device": "cpu", "max_loras": 4})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[1]
        assert http_json(url, "GET", "/health")[0] == 200
        models = http_json(url, "GET", "/v1/models")[1]["data"]
        assert [m["id"] for m in models] == ["tiny", "adapter-0000", "adapter-0001", "adapter-0002"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    proc.stdout.close()
    proc.stderr.close()


def test_serve_refuses_bad_options_with_a_sentence(tmp_path, capsys):
    import argparse

    from engines.server.cli import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv, words in [(["--engine", "warp"], "unknown engine"),
                        (["--adapters", str(tmp_path / "none")], "not a folder"),
                        (["--engine-config", "{bad json"], "cannot parse"),
                        (["--engine-config", '{"turbo": 1}'], "unknown key"),
                        (["--max-queue", "0"], "max_queue")]:
        started = time.monotonic()
        code = run(parser.parse_args(argv))
        assert code == 2, argv
        assert words in capsys.readouterr().err, argv
        assert time.monotonic() - started < 10


def test_engine_config_from_inline_json_or_a_json_or_yaml_file(tmp_path):
    from engines.server.cli import load_engine_config

    (tmp_path / "e.json").write_text('{"max_loras": 3}')
    (tmp_path / "e.yaml").write_text("max_loras: 5\ndevice: cpu\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert load_engine_config('{"seed": 2}') == {"seed": 2}
    assert load_engine_config(str(tmp_path / "e.json")) == {"max_loras": 3}
    assert load_engine_config(str(tmp_path / "e.yaml")) == {"max_loras": 5, "device": "cpu"}
    assert load_engine_config(None) == {}
    with pytest.raises(ValueError, match="must hold an object"):
        load_engine_config(str(tmp_path / "list.yaml"))
    with pytest.raises(ValueError, match="neither a JSON object nor an existing file"):
        load_engine_config(str(tmp_path / "missing.json"))
