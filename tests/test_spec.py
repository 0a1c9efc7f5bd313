"""Workload spec: every shipped workload loads and round-trips; bad input names the dotted field and the cause."""
from pathlib import Path

import pytest

from harness.spec import WorkloadError, WorkloadSpec, load_workload

WORKLOADS = sorted((Path(__file__).resolve().parent.parent / "workloads").glob("*.yaml"))


def base(**over):
    d = {"name": "t", "seed": 3, "duration_s": 10, "warmup_s": 1, "model": "tiny",
         "adapters": {"count": 4, "ranks": [8, 16]},
         "traffic": {"rate": 5.0, "popularity": {"kind": "zipf", "s": 1.0}, "arrivals": {"kind": "poisson"},
                     "prompt_tokens": {"kind": "fixed", "value": 16}, "output_tokens": {"kind": "fixed", "value": 4}},
         "slo": {"ttft_s": 1.0}, "engines": ["multilora"]}
    d.update(over)
    return d


def test_shipped_workloads_load_round_trip_and_have_a_cpu_variant():
    assert {p.name for p in WORKLOADS} >= {"bursty30.yaml", "steady-poisson.yaml", "powerlaw1000.yaml", "replay.yaml"}
    for path in WORKLOADS:
        spec = load_workload(path)
        assert isinstance(spec, WorkloadSpec)
        assert load_workload(spec.to_dict(), base_dir=spec.base_dir) == spec
        cpu = spec.for_machine(has_cuda=False)
        assert cpu.model == "tiny" and cpu.cpu is None and cpu.resolution.cpu_applied == (spec.cpu is not None)
        gpu = spec.for_machine(has_cuda=True)
        assert gpu.cpu is None and not gpu.resolution.cpu_applied
        assert gpu.to_dict() == {k: v for k, v in spec.to_dict().items() if k != "cpu"}


def test_bursty30_keeps_its_spirit():
    spec = load_workload(WORKLOADS[[p.name for p in WORKLOADS].index("bursty30.yaml")])
    assert spec.adapters.count == 30
    assert spec.traffic.arrivals.kind == "onoff" and spec.traffic.popularity.kind == "zipf"
    cpu = spec.for_machine(False)
    assert cpu.traffic.rate == 26.0 and cpu.duration_s == 15 and cpu.slo.tpot_s == 0.2
    assert cpu.traffic.arrivals.kind == "onoff"  # the cpu section keeps the bursts, only slower


def test_with_overrides_returns_a_new_validated_spec():
    spec = load_workload(base())
    new = spec.with_overrides({"traffic.rate": 4.0, "adapters.count": 100, "duration_s": 30})
    assert (new.traffic.rate, new.adapters.count, new.duration_s) == (4.0, 100, 30.0)
    assert spec.traffic.rate == 5.0  # the original is untouched
    with pytest.raises(WorkloadError, match=r"traffic\.rate: -1 must be > 0"):
        spec.with_overrides({"traffic.rate": -1})
    with pytest.raises(WorkloadError, match=r"^override nosuch\.x: workload: unknown key\(s\) \['nosuch'\]"):
        spec.with_overrides({"nosuch.x": 1})
    with pytest.raises(WorkloadError, match=r"^--rate-per-adapter: traffic\.rate: -1 must be > 0"):
        spec.with_overrides({"traffic.rate": -1}, {"traffic.rate": "--rate-per-adapter"})


@pytest.mark.parametrize("change, message", [
    ({"duration_s": 0}, r"^duration_s: 0 must be > 0"),
    ({"warmup_s": -2}, r"^warmup_s: -2 must be >= 0"),
    ({"seed": 1.5}, r"^seed: 1.5 must be an integer"),
    ({"bogus": 1}, r"^workload: unknown key\(s\) \['bogus'\]"),
    ({"model": "gpt-9"}, r"^model: 'gpt-9' is neither a preset"),
    ({"adapters": {"count": -1}}, r"^adapters\.count: -1 must be >= 0"),
    ({"adapters": {"count": 2, "ranks": [0]}}, r"^adapters\.ranks\[0\]: 0 must be an integer"),
    ({"adapters": {"count": 2, "targets": ["lm_head"]}}, r"^adapters\.targets\[0\]: 'lm_head' is not one of"),
    ({"adapters": {"count": 2, "path": "/nonexistent/adapters"}}, r"^adapters\.path: .* is not a folder"),
    ({"slo": {"ttft_s": 0}}, r"^slo\.ttft_s: 0 must be > 0"),
    ({"slo": {"p99": 1}}, r"^slo: unknown key\(s\) \['p99'\]"),
    ({"slo": {"ttft_s": 1, "attainment": 1.5}}, r"^slo\.attainment: 1.5 must be <= 1"),
    ({"engines": ["vllm"]}, r"^engines\[0\]: 'vllm' is not an in-process engine"),
    ({"engines": [{"name": "x", "kind": "external"}]}, r"^engines\[0\]: an external engine needs a url"),
    ({"engines": [{"kind": "external", "url": "ftp://x"}]}, r"^engines\[0\]\.url: 'ftp://x' must start with http"),
    ({"engine_options": {"multilora": {"max_loras": 0}}}, r"^engine_options\.multilora: .*max_loras=0 must be >= 1"),
    ({"engine_options": {"multilora": {"warp": 9}}}, r"^engine_options\.multilora: .*unknown key"),
    ({"engine_options": {"tgi": {}}}, r"^engine_options\.tgi: not an in-process engine"),
    ({"loadgen": {"workers": 0}}, r"^loadgen\.workers: 0 must be >= 1"),
    ({"cpu": {"rate": -3}}, r"^cpu: traffic\.rate: -3 must be > 0 \(with the cpu: section applied\)"),
    ({"cpu": {"gpu_count": 1}}, r"^cpu: unknown key\(s\) \['gpu_count'\]"),
])
def test_bad_top_level_values_name_the_field(change, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(base(**change))


@pytest.mark.parametrize("traffic, message", [
    ({"rate": -1}, r"^traffic\.rate: -1 must be > 0"),
    ({"rate": "fast"}, r"^traffic\.rate: 'fast' must be a number"),
    ({}, r"^traffic\.rate: missing"),
    ({"rate": 1, "popularity": {"kind": "pareto"}}, r"^traffic\.popularity\.kind: 'pareto' is not one of"),
    ({"rate": 1, "popularity": {"kind": "zipf"}}, r"^traffic\.popularity\.s: missing"),
    ({"rate": 1, "popularity": {"kind": "power", "alpha": 0}}, r"^traffic\.popularity\.alpha: 0 must be > 0"),
    ({"rate": 1, "popularity": {"kind": "weights", "weights": [1, -1, 1, 1]}},
     r"^traffic\.popularity\.weights\[1\]: -1 must be a finite number >= 0"),
    ({"rate": 1, "arrivals": {"kind": "gamma", "cv": -0.5}}, r"^traffic\.arrivals\.cv: -0.5 must be > 0"),
    ({"rate": 1, "arrivals": {"kind": "onoff", "mean_on_s": 1}}, r"^traffic\.arrivals\.mean_off_s: missing"),
    ({"rate": 1, "arrivals": {"kind": "onoff", "mean_on_s": 1, "mean_off_s": 2, "burst_rate": 5}},
     r"^traffic\.rate: give either traffic\.rate or traffic\.arrivals\.burst_rate"),
    ({"rate": 1, "prompt_tokens": {"kind": "uniform", "low": 10, "high": 5}},
     r"^traffic\.prompt_tokens\.high: 5 must be >= low \(10\)"),
    ({"rate": 1, "output_tokens": {"kind": "fixed", "value": 0}}, r"^traffic\.output_tokens\.value: 0 must be >= 1"),
    ({"rate": 1, "output_tokens": {"kind": "file", "path": "nope.txt"}},
     r"^traffic\.output_tokens\.path: .*nope\.txt does not exist"),
    ({"rate": 1, "burst": True}, r"^traffic: unknown key\(s\) \['burst'\]"),
    ({"replay": {"path": "traces/sample.csv"}, "rate": 2}, r"^traffic\.rate: a replayed trace sets its own rate"),
    ({"replay": {"path": "nope.csv"}}, r"^traffic\.replay\.path: .*nope\.csv does not exist"),
])
def test_bad_traffic_names_the_dotted_field(traffic, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(base(traffic=traffic), base_dir=WORKLOADS[0].parent)


def test_weights_must_match_the_adapter_count_when_the_trace_is_built():
    from harness.trace import build_trace

    spec = load_workload(base(traffic={"rate": 1, "popularity": {"kind": "weights", "weights": [1, 2]}}))
    with pytest.raises(WorkloadError, match=r"traffic\.popularity\.weights: 2 weights given for 4 adapters"):
        build_trace(spec)


def test_burst_rate_sets_the_mean_rate():
    spec = load_workload(base(traffic={"arrivals": {"kind": "onoff", "mean_on_s": 1, "mean_off_s": 3,
                                                    "burst_rate": 20}}))
    assert spec.traffic.rate is None and spec.traffic.mean_rate == pytest.approx(5.0)
    # the cpu section's rate replaces the burst rate
    cpu = load_workload(base(traffic={"arrivals": {"kind": "onoff", "mean_on_s": 1, "mean_off_s": 3, "burst_rate": 20}},
                             cpu={"rate": 2.0})).for_machine(False)
    assert cpu.traffic.mean_rate == 2.0


def test_yaml_file_errors(tmp_path):
    with pytest.raises(WorkloadError, match="does not exist"):
        load_workload(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(WorkloadError, match="not valid YAML"):
        load_workload(bad)
    bad.write_text("- a list\n")
    with pytest.raises(WorkloadError, match=r"^\S*bad\.yaml: workload: .* must be a mapping"):
        load_workload(bad)


def test_engine_list_merges_engine_options():
    spec = load_workload(base(engines=["multilora", {"name": "merged", "options": {"max_loras": 2}},
                                       {"name": "vllm", "kind": "external", "url": "http://127.0.0.1:9"}],
                              engine_options={"multilora": {"gpu_slots": 8}, "merged": {"max_num_seqs": 4}}))
    e = spec.engine_list()
    assert e[0] == {"name": "multilora", "kind": "inprocess", "label": "multilora", "options": {"gpu_slots": 8}}
    assert e[1]["options"] == {"max_num_seqs": 4, "max_loras": 2}
    assert e[2]["kind"] == "external" and "options" not in e[2]
