"""Before an external launch: LoRA limits from the adapters, model and adapter path checks, the server's Python
and environment, and the documentation of every spec key."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from engines import external_prep
from engines.adapters.synth import make_adapters
from engines.external import ExternalServer, ExternalSpec, build_command, spec_help
from engines.external_presets import vllm_cpu_env
from engines.model.config import ModelArgs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep-adapters")
    make_adapters(ModelArgs.from_name("tiny"), 3, [4, 12, 8], ["q_proj", "v_proj"], root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "config.json").write_text("{}")
    return folder


def spec(**kw) -> ExternalSpec:
    return ExternalSpec.from_dict({"preset": "vllm", "model": "m", **kw})


def test_lora_limits_come_from_the_adapters_and_round_up_to_the_servers_ranks(adapters):
    got = external_prep.with_lora_limits(spec(adapters=str(adapters)))
    assert got.max_loras == 3 and got.max_lora_rank == 16  # largest rank 12 -> vLLM's next allowed rank
    cmd = build_command(got, 1)
    assert cmd[cmd.index("--max-loras") + 1] == "3" and cmd[cmd.index("--max-lora-rank") + 1] == "16"
    given = external_prep.with_lora_limits(spec(adapters=str(adapters), max_loras=2, max_lora_rank=64))
    assert (given.max_loras, given.max_lora_rank) == (2, 64)  # what the user wrote wins
    own = external_prep.with_lora_limits(ExternalSpec.from_dict({"command": ["x"], "adapters": str(adapters)}))
    assert own.max_lora_rank == 12  # no preset: no rounding
    assert external_prep.with_lora_limits(spec()).max_loras is None  # no adapters: the server's default


def test_a_cap_and_a_rank_above_the_servers_limit(adapters, monkeypatch):
    capped = dataclasses.replace(external_prep.PRESETS["vllm"], max_loras_cap=2)
    monkeypatch.setitem(external_prep.PRESETS, "vllm", capped)
    assert external_prep.with_lora_limits(spec(adapters=str(adapters))).max_loras == 2
    small = dataclasses.replace(capped, lora_ranks=(1, 8))
    monkeypatch.setitem(external_prep.PRESETS, "vllm", small)
    with pytest.raises(ValueError, match="largest rank 12 is above the most vllm takes"):
        external_prep.with_lora_limits(spec(adapters=str(adapters)))


def test_model_paths_are_checked_before_launch(adapters, checkpoint, tmp_path):
    external_prep.check_model_path(spec(model=str(checkpoint), adapters=str(adapters)))
    external_prep.check_model_path(spec(model="meta-llama/Meta-Llama-3-8B"))  # a hub id: the server looks it up
    external_prep.check_model_path(ExternalSpec.from_dict({"preset": "self", "model": "tiny"}))
    with pytest.raises(FileNotFoundError, match="harness model make --base tiny OUT"):
        external_prep.check_model_path(spec(model="tiny"))  # what the cpu section used to launch: `vllm serve tiny`
    with pytest.raises(FileNotFoundError, match="without config.json"):
        external_prep.check_model_path(spec(model=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        external_prep.check_model_path(spec(model=str(tmp_path / "nope")))
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        external_prep.check_model_path(spec(model=str(checkpoint), adapters={"a": str(tmp_path / "bad")}))


def test_launch_fails_before_spawning_with_the_package_hint(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(external_prep, "PROJECT_ROOT", tmp_path)  # no .venv-vllm there
    server = ExternalServer(spec(model=str(checkpoint)), log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="vllm-cpu.*scripts/vllm_cpu_env.sh"):
        server.start()
    assert server.proc is None


def test_the_presets_venv_is_used_when_this_python_lacks_the_module(tmp_path, monkeypatch):
    venv_python = tmp_path / ".venv-vllm" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    monkeypatch.setattr(external_prep, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(external_prep, "_has_module", lambda python, module: python == str(venv_python))
    assert external_prep.server_python(spec()) == str(venv_python)
    with pytest.raises(FileNotFoundError, match="lack"):  # a python given explicitly is the only one tried
        external_prep.server_python(spec(python=sys.executable))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        external_prep.server_python(spec(python=str(tmp_path / "no-python")))


def test_has_module_asks_the_interpreter():
    assert external_prep._has_module(sys.executable, "json")
    assert not external_prep._has_module(sys.executable, "no_such_module_xyz")


def test_cpu_env_sets_the_kv_space_unless_given(monkeypatch):
    space = int(vllm_cpu_env()["VLLM_CPU_KVCACHE_SPACE"])
    assert 1 <= space <= 64
    monkeypatch.setattr(external_prep, "_has_cuda", lambda: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env, added = external_prep.launch_env(spec())
    assert added == {"VLLM_CPU_KVCACHE_SPACE": str(space)} and env["VLLM_CPU_KVCACHE_SPACE"] == str(space)
    env, added = external_prep.launch_env(spec(env={"VLLM_CPU_KVCACHE_SPACE": "3"}))
    assert added == {} and env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # the spec wins
    monkeypatch.setattr(external_prep, "_has_cuda", lambda: True)
    assert external_prep.launch_env(spec())[1] == {}  # a CUDA machine: nothing added
    assert external_prep.launch_env(ExternalSpec.from_dict({"preset": "sglang", "model": "m"}))[1] == {}


def test_every_spec_key_is_documented():
    text = spec_help()
    docs = (ROOT / "docs" / "peers.md").read_text()
    for f in dataclasses.fields(ExternalSpec):
        assert f.metadata.get("doc"), f.name
        assert f"  {f.name} " in text
        assert f"`{f.name}`" in docs, f"docs/peers.md does not list the key {f.name}"
