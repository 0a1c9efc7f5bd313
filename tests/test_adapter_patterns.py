"""Patterns in adapter configs (target_modules, rank_pattern, alpha_pattern) cost a bounded time and a bad one is
a 400 that names the file and key, over HTTP too, while the server keeps answering."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from engines.adapters.peft_format import read_config
from engines.adapters.synth import make_adapters
from engines.base import AdapterFileError
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.registry import create_engine
from engines.server.app import build_app
from engines.server.runner import ServerThread
from engines.server.state import ServerOptions
from engines.tokenizer import get_tokenizer
from tests.test_server import http_json

CRAFTED = "(.*){1,300}[bc]"  # exponential backtracking on every module path (no 'b' or 'c' at the end)


def _config(tmp_path, **fields):
    folder = tmp_path / "a"
    folder.mkdir(exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
           **fields}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("fields,key", [({"target_modules": CRAFTED}, "target_modules"),
                                        ({"rank_pattern": {CRAFTED: 4}}, "rank_pattern"),
                                        ({"alpha_pattern": {CRAFTED: 4}}, "alpha_pattern")])
def test_a_crafted_pattern_is_refused_within_its_budget(tmp_path, fields, key):
    settings = read_config(_config(tmp_path, **fields))
    start = time.monotonic()
    with pytest.raises(AdapterFileError) as err:
        for layer in range(32):
            for module in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                settings.targets(layer, module)
                settings.rank_alpha(layer, module)
    assert time.monotonic() - start < 5.0  # the issue saw 15 s; the budget is 0.2 s (the timeout overshoots)
    assert "adapter_config.json" in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("fields,key", [({"target_modules": "(unclosed"}, "target_modules"),
                                        ({"rank_pattern": {"[z-a]": 4}}, "rank_pattern"),
                                        ({"alpha_pattern": {"x" * 5000: 4}}, "alpha_pattern")])
def test_a_bad_pattern_names_the_file_and_key(tmp_path, fields, key):
    with pytest.raises(AdapterFileError, match=rf"adapter_config.json: {key}"):
        read_config(_config(tmp_path, **fields))


def test_patterns_keep_peft_semantics(tmp_path):
    settings = read_config(_config(tmp_path, target_modules=r".*\.(q|v)_proj", rank_pattern={"v_proj": 4},
                                   alpha_pattern={r"layers\.1\..*": 2}))
    assert [settings.targets(0, m) for m in ("q_proj", "k_proj", "v_proj")] == [True, False, True]
    assert settings.rank_alpha(0, "v_proj") == (4, 16.0) and settings.rank_alpha(1, "q_proj") == (8, 2.0)


def test_a_crafted_adapter_loaded_at_run_time_is_a_400_and_the_server_keeps_answering(tmp_path):
    root = tmp_path / "root"
    make_adapters(ModelArgs.from_name("tiny"), 1, [8], ["q_proj", "v_proj"], root)
    good = next(root.iterdir())
    bad = root / "crafted"
    shutil.copytree(good, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": CRAFTED}))
    engine = create_engine(EngineConfig(engine="merged", model="tiny", device="cpu"))
    app = build_app(engine, get_tokenizer("tiny"), ServerOptions(adapter_root=str(root), runtime_lora=True,
                                                                 model_aliases=("tiny",)))
    with ServerThread(app) as server:
        status, body = http_json(server.url, "POST", "/v1/load_lora_adapter",
                                 {"lora_name": "crafted", "lora_path": "crafted"})
        assert status == 400 and "adapter_config.json" in body["error"]["message"], body
        assert "target_modules" in body["error"]["message"]
        assert http_json(server.url, "GET", "/health")[0] == 200
        status, body = http_json(server.url, "POST", "/v1/completions",
                                 {"model": "tiny", "prompt": [256, 1, 2], "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
