"""Precedence: the file, then its cpu: section on a machine without CUDA, then every --set; errors name their place."""
from pathlib import Path

import pytest

from engines.adapters.folders import adapter_folders, check_adapter_folders
from harness.spec import WorkloadError, load_workload, parse_set

WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
BURSTY = WORKLOADS / "bursty30.yaml"


def base(**over):
    d = {"name": "t", "duration_s": 10, "model": "llama3-8b", "adapters": {"count": 4},
         "traffic": {"rate": 5.0}, "engines": ["multilora"],
         "cpu": {"model": "tiny", "duration_s": 2, "rate": 1.0, "slo": {"tpot_s": 0.5}}}
    d.update(over)
    return d


def test_set_wins_over_the_cpu_section():
    spec = load_workload(BURSTY, machine="cpu", overrides=parse_set(["traffic.rate=16", "duration_s=7"]))
    assert (spec.traffic.rate, spec.duration_s, spec.model, spec.warmup_s) == (16.0, 7.0, "tiny", 3.0)
    changed = {k for k, _, _ in spec.resolution.cpu_changes}
    assert {"model", "warmup_s", "slo.tpot_s"} <= changed and not changed & {"traffic.rate", "duration_s"}
    text = "\n".join(spec.resolution.describe())
    assert "no CUDA here" in text and "model: llama3-8b -> tiny" in text
    assert "traffic.rate: 26.0 is overridden by --set traffic.rate=16" in text
    gpu = load_workload(BURSTY, machine="cuda", overrides=parse_set(["traffic.rate=16"]))
    assert (gpu.traffic.rate, gpu.duration_s, gpu.model) == (16.0, 120.0, "llama3-8b")
    assert gpu.resolution.describe() == []


def test_order_of_with_overrides_and_for_machine_does_not_matter():
    spec = load_workload(base())
    a = spec.with_overrides({"traffic.rate": 9.0}).for_machine(False)
    b = spec.for_machine(False).with_overrides({"traffic.rate": 9.0})
    assert a == b and a.traffic.rate == 9.0 and a.duration_s == 2.0 and a.model == "tiny"
    assert a.with_overrides({"duration_s": 3}).traffic.rate == 9.0  # earlier overrides are kept


def test_set_of_a_rate_replaces_a_burst_rate():
    arrivals = {"kind": "onoff", "mean_on_s": 1, "mean_off_s": 3, "burst_rate": 20}
    spec = load_workload(base(traffic={"arrivals": arrivals}), machine="cuda")
    assert spec.traffic.mean_rate == pytest.approx(5.0)
    assert spec.with_overrides({"traffic.rate": 2.0}).traffic.mean_rate == 2.0


def test_set_of_a_cpu_key_changes_the_cpu_section():
    spec = load_workload(base(), machine="cpu", overrides=parse_set(["cpu.rate=4"]))
    assert spec.traffic.rate == 4.0
    assert load_workload(base(), machine="cuda", overrides=parse_set(["cpu.rate=4"])).traffic.rate == 5.0


def test_a_checkpoint_folder_is_never_swapped_for_the_cpu_model(tmp_path):
    spec = load_workload(base(model=str(tmp_path)), machine="cpu")
    assert spec.model == str(tmp_path) and spec.duration_s == 2.0
    assert any("not a preset" in n for n in spec.resolution.notes)


def test_an_external_engine_keeps_its_model_on_a_cpu_machine():
    engines = ["multilora", {"name": "vllm", "kind": "external", "preset": "vllm"},
               {"name": "mine", "kind": "external", "preset": "vllm", "model": "/models/x"}]
    spec = load_workload(base(engines=engines), machine="cpu")
    assert spec.model == "tiny"
    assert spec.engines[1].external["model"] == "llama3-8b" and spec.engines[2].external["model"] == "/models/x"
    assert any("vllm: keeps model 'llama3-8b'" in n for n in spec.resolution.notes)
    # an explicit --set model applies to it too
    spec = load_workload(base(engines=engines), machine="cpu", overrides=parse_set(["model=qwen2.5-0.5b"]))
    assert spec.model == "qwen2.5-0.5b" and spec.engines[1].external["model"] == "qwen2.5-0.5b"


def test_a_typo_in_the_main_section_is_named_as_such(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(BURSTY.read_text().replace("  rate: 8.0", "  rat: 8.0"))
    with pytest.raises(WorkloadError) as exc:
        load_workload(path, machine="cpu")
    assert str(exc.value).startswith(f"{path}: traffic: unknown key(s) ['rat']") and "cpu" not in str(exc.value)


def test_a_bad_cpu_value_is_named_as_the_cpu_sections(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text(BURSTY.read_text().replace("  rate: 26.0", "  rate: -3.0"))
    with pytest.raises(WorkloadError, match=r"w\.yaml: cpu: traffic\.rate: -3\.0 must be > 0 \(with the cpu: "):
        load_workload(path, machine="cuda")  # checked on every machine


@pytest.mark.parametrize("items, message", [
    (["traffic.rat=16"], r"^--set traffic\.rat=16: traffic: unknown key\(s\) \['rat'\]"),
    (["durration_s=3", "traffic.rate=2"], r"^--set durration_s=3: workload: unknown key\(s\) \['durration_s'\]"),
    (["traffic.rate=-1"], r"^--set traffic\.rate=-1: traffic\.rate: -1 must be > 0"),
    (["traffic.rate.x=1"], r"^--set traffic\.rate\.x=1: traffic\.rate: is 1\.0, not a mapping"),
    (["cpu.speed=1"], r"^--set cpu\.speed=1: cpu: unknown key\(s\) \['speed'\]"),
])
def test_set_errors_name_the_flag_as_typed(items, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(base(), machine="cpu", overrides=parse_set(items))


@pytest.mark.parametrize("item", ["rate", "=3", "a..b=1", "x=[1"])
def test_malformed_set_items_are_refused(item):
    with pytest.raises(WorkloadError, match=r"^--set "):
        parse_set([item])


def test_one_adapter_folder_rule_for_the_spec_and_the_engines(tmp_path):
    root = tmp_path / "adapters"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "adapter_config.json").write_text("{}")
        (root / name / "adapter_model.safetensors").write_bytes(b"")
    (root / ".hidden").mkdir()
    (root / "README.md").write_text("not an adapter")
    spec = load_workload(base(adapters={"path": str(root)}, cpu=None))
    assert spec.adapters.names() == ["a", "b"] == [p.name for p in adapter_folders(root)]
    (root / "empty").mkdir()  # the engines would serve it as an adapter and fail: the spec refuses it first
    assert [p.name for p in adapter_folders(root)] == ["a", "b", "empty"]
    with pytest.raises(ValueError, match=r"empty is not an adapter \(no adapter_config\.json\)"):
        check_adapter_folders(root)
    with pytest.raises(WorkloadError, match=r"^adapters\.path: .*empty is not an adapter"):
        load_workload(base(adapters={"path": str(root)}, cpu=None))


def test_engine_entries_are_checked_once_with_their_place():
    from harness.engine_spec import parse_engine_entry

    with pytest.raises(WorkloadError, match=r"^--engine vllmm: 'vllmm' is not an in-process engine .*did you mean 'vllm'"):
        parse_engine_entry("vllmm", "--engine vllmm")
    with pytest.raises(WorkloadError, match=r"give '\{\"name\": \"vllm\", \"kind\": \"external\""):
        parse_engine_entry("vllm", "--engine vllm")
    with pytest.raises(WorkloadError, match=r"^engines\[0\]\.options: \['model'\] are set by the harness"):
        load_workload(base(engines=[{"name": "merged", "options": {"model": "x"}}]))
    entry = parse_engine_entry({"name": "tests.x:Slow", "label": "multilora", "options": {"max_num_seqs": 8}}, "e")
    assert (entry.name, entry.label, entry.options) == ("tests.x:Slow", "multilora", {"max_num_seqs": 8})


def test_external_engine_keys_are_checked_when_the_workload_loads():
    with pytest.raises(WorkloadError, match=r"engines\[0\]: unknown key\(s\) \['gpus'\]"):
        load_workload(base(engines=[{"kind": "external", "url": "http://127.0.0.1:1", "gpus": 2}]))
