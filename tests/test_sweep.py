"""Sweeps: the orchestration over engines and adapter counts with a fake runner whose SLO curve is known."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.sweep import SweepConfig, curve_table, probe_from_run, run_sweep

WORKLOAD = str(Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml")
CAPACITY = {"multilora": 24.0, "merged": 6.0}  # λ*(N) = c / (1 + N/20)


def truth(engine: str, n: int) -> float:
    return CAPACITY[engine] / (1 + n / 20)


class FakeRunner:
    """Writes a run directory per call; SLO attainment 1.0 below the engine's λ*(N), 0.5 above."""

    def __init__(self):
        self.calls = []

    def __call__(self, spec, engine, runs_root, *, log=print, progress=True, workers=None):
        name = engine if isinstance(engine, str) else engine["name"]
        rate, n = spec.traffic.rate, spec.adapters.count
        self.calls.append((name, rate, n, spec.duration_s, workers))
        path = Path(runs_root) / f"run-{len(self.calls):03d}-{name}"
        path.mkdir(parents=True)
        ok = rate <= truth(name, n)
        summary = {"engine": name, "valid": True, "status": "completed",
                   "metrics": {"slo_attainment": 1.0 if ok else 0.5, "goodput": 10.0 * rate if ok else 1.0}}
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "status.json").write_text(json.dumps({"status": "completed", "message": ""}))
        return path


def fake_load(path):
    path = Path(path)
    return SimpleNamespace(summary=json.loads((path / "summary.json").read_text()),
                           status=json.loads((path / "status.json").read_text()))


def test_rate_sweep_finds_each_lambda_star(tmp_path):
    runner = FakeRunner()
    cfg = SweepConfig(workload=WORKLOAD, over="rate", engines=("multilora", "merged"), adapters=(1, 30, 100),
                      resolution=0.05, max_runs=20, duration_s=4.0, workers=2, out=str(tmp_path))
    out = run_sweep(cfg, run_engine=runner, load_run=fake_load, has_cuda=False, log=lambda s: None)
    payload = json.loads((out / "capacity.json").read_text())
    assert payload["over"] == "rate" and payload["machine"] == "cpu" and payload["target"] == 0.9
    assert payload["spec"]["adapters"]["count"] == 30 and payload["spec"]["model"] == "tiny"  # cpu: section
    for engine in ("multilora", "merged"):
        pts = payload["curves"][engine]
        assert [p["n"] for p in pts] == [1, 30, 100]
        for p in pts:
            lam = truth(engine, p["n"])
            assert lam / 1.05 <= p["lambda_star"] <= lam
            assert p["goodput_tok_s"] == pytest.approx(10.0 * p["lambda_star"])
            assert p["converged"]
            # every run tried is kept in the sweep folder
            assert all((out / t["run"] / "summary.json").is_file() for t in p["tried"])
    assert all(c[3] == 4.0 and c[4] == 2 for c in runner.calls)  # duration and workers reached every run
    assert len(list((out / "runs").iterdir())) == len(runner.calls)
    table = curve_table(payload)
    assert "multilora" in table and "merged" in table and len(table.splitlines()) == 2 + 6 + 1
    for p in payload["curves"]["merged"]:  # every lambda* is shown as the bracket it was found in
        assert p["bound"] == "bracket" and p["lambda_star"] < p["upper"]
        assert f"[{p['lambda_star']:.4g}, {p['upper']:.4g}]" in table


def test_adapters_sweep_finds_largest_n(tmp_path):
    runner = FakeRunner()
    cfg = SweepConfig(workload=WORKLOAD, over="adapters", engines=("multilora",), rates=(4.0,), max_runs=30,
                      out=str(tmp_path))
    out = run_sweep(cfg, run_engine=runner, load_run=fake_load, has_cuda=False, log=lambda s: None)
    pts = json.loads((out / "capacity.json").read_text())["curves"]["multilora"]
    # 24 / (1 + N/20) >= 4  <=>  N <= 100
    assert len(pts) == 1 and pts[0]["n"] == 100 and pts[0]["lambda_star"] == 4.0
    assert all(float(c[2]).is_integer() for c in runner.calls)


def test_invalid_or_failed_runs_count_as_failures():
    p = probe_from_run({"metrics": {"slo_attainment": 1.0, "goodput": 5.0}, "valid": False,
                        "invalid_reasons": ["client fell behind: p99 lag 0.4 s"]}, {"status": "completed"}, "r")
    assert p.note.startswith("invalid: client fell behind")
    p = probe_from_run({"metrics": {"slo_attainment": 1.0}, "valid": True}, {"status": "server_died",
                                                                             "message": "exit 1"}, "r")
    assert p.note == "run server_died: exit 1"
    p = probe_from_run({"metrics": {"slo_attainment": None, "goodput": None}, "valid": True},
                       {"status": "completed"}, "r")
    assert p.attainment == 0.0 and p.note == ""


class LaggingRunner(FakeRunner):
    """The client falls behind above `client_max` req/s per Locust worker; the server meets the SLO below truth."""

    def __init__(self, client_max: float):
        super().__init__()
        self.client_max = client_max

    def __call__(self, spec, engine, runs_root, *, log=print, progress=True, workers=None):
        path = super().__call__(spec, engine, runs_root, log=log, progress=progress, workers=workers)
        summary = json.loads((path / "summary.json").read_text())
        rate = spec.traffic.rate
        lagging = rate > self.client_max * workers
        # a lagging client also makes the server look slow: attainment would read as a miss
        max_lag = spec.loadgen.max_lag_p99_s  # the workload's own validity threshold, whatever the file sets
        summary["metrics"].update(schedule_lag_p99=4 * max_lag if lagging else max_lag / 100,
                                  slo_attainment=0.5 if lagging else summary["metrics"]["slo_attainment"])
        summary["valid"] = not lagging
        (path / "summary.json").write_text(json.dumps(summary))
        return path


def test_lagging_probe_is_rerun_with_more_workers_then_recorded_as_limited(tmp_path):
    # multilora's lambda*(1) is 22.9 req/s; one worker sends at most 5 req/s on time, the machine has 4 cores
    runner = LaggingRunner(client_max=5.0)
    cfg = SweepConfig(workload=WORKLOAD, engines=("multilora",), adapters=(1,), resolution=0.05, max_runs=20,
                      out=str(tmp_path))
    out = run_sweep(cfg, run_engine=runner, load_run=fake_load, has_cuda=False, log=lambda s: None, cores=4)
    payload = json.loads((out / "capacity.json").read_text())
    (point,) = payload["curves"]["multilora"]
    # rates the client could not send with 1 worker were re-run with 2, then 4 (the cores), never more
    workers_at = {}
    for name, rate, n, _, workers in runner.calls:
        workers_at.setdefault(rate, []).append(workers)
    assert max(w for ws in workers_at.values() for w in ws) == 4
    assert any(ws == [1, 2, 4] for ws in workers_at.values())
    # nothing lagging counted as an SLO miss: the answer is a lower bound below the client's 20 req/s
    limited = [t for t in point["tried"] if t["limited"]]
    assert limited and all(not t["pass"] and t["load"] > 20.0 for t in limited)
    assert all(t["load"] <= 20.0 for t in point["tried"] if not t["limited"])
    assert point["bound"] == "lower" and point["upper"] is None and 0 < point["lambda_star"] <= 20.0
    assert "load generator" in point["reason"]
    table = curve_table(payload)
    assert f">= {point['lambda_star']:.4g}" in table


def test_bad_sweep_config_names_field():
    with pytest.raises(ValueError, match="over: 'latency'"):
        SweepConfig(workload=WORKLOAD, over="latency")
    with pytest.raises(ValueError, match="adapters"):
        SweepConfig(workload=WORKLOAD, adapters=(0, 5))
    with pytest.raises(ValueError, match="target"):
        SweepConfig(workload=WORKLOAD, target=0.0)


def test_sweep_that_fails_before_any_run_leaves_nothing(tmp_path):
    def broken(spec, engine, runs_root, **kw):
        raise ValueError("traffic: the trace has no request")

    with pytest.raises(ValueError, match="no request"):
        run_sweep(SweepConfig(workload=WORKLOAD, engines=("multilora",), out=str(tmp_path)), run_engine=broken,
                  load_run=fake_load, has_cuda=False, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_real_sweep_on_the_cpu(tmp_path):
    """harness sweep end to end: real server processes, Locust load and run directories (tiny model, 2 runs)."""
    import yaml

    from harness.cli import main
    from harness.store import load_run

    workload = tmp_path / "tiny.yaml"
    workload.write_text(yaml.safe_dump({
        "name": "sweep-e2e", "seed": 3, "duration_s": 2.0, "warmup_s": 0.5, "model": "tiny",
        "adapters": {"count": 2, "ranks": [8], "targets": ["q_proj", "v_proj"]},
        "traffic": {"rate": 3.0, "popularity": {"kind": "uniform"}, "arrivals": {"kind": "poisson"},
                    "prompt_tokens": {"kind": "fixed", "value": 8}, "output_tokens": {"kind": "fixed", "value": 4}},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.5}, "engines": ["multilora"]}))
    out = tmp_path / "sweeps"
    assert main(["sweep", str(workload), "--over", "rate", "--adapters", "2", "--max-runs", "2",
                 "--resolution", "0.5", "--out", str(out)]) == 0
    (sweep,) = list(out.iterdir())
    payload = json.loads((sweep / "capacity.json").read_text())
    (point,) = payload["curves"]["multilora"]
    assert point["n"] == 2 and len(point["tried"]) == 2
    assert point["tried"][0]["load"] == 3.0 and point["tried"][1]["load"] in (1.5, 6.0)  # halve or double
    for t in point["tried"]:
        run = load_run(sweep / t["run"])  # every run tried is a real run directory in the sweep
        assert run.status["status"] == "completed"
        assert t["attainment"] == pytest.approx(run.summary["metrics"]["slo_attainment"] or 0.0)
        assert t["pass"] == (t["attainment"] >= 0.9 and not t["note"])
    passed = [t["load"] for t in point["tried"] if t["pass"]]
    assert point["lambda_star"] == (max(passed) if passed else 0.0)


def test_a_run_that_could_not_run_stops_that_engine_only(tmp_path):
    class Broken(FakeRunner):
        def __call__(self, spec, engine, runs_root, **kw):
            path = super().__call__(spec, engine, runs_root, **kw)
            if self.calls[-1][0] == "merged" and spec.adapters.count == 30:
                (path / "status.json").write_text(json.dumps({"status": "error", "message": "warm-up failed"}))
            return path

    runner = Broken()
    cfg = SweepConfig(workload=WORKLOAD, engines=("merged", "multilora"), adapters=(1, 30, 100), max_runs=20,
                      resolution=0.05, out=str(tmp_path))
    out = run_sweep(cfg, run_engine=runner, load_run=fake_load, has_cuda=False, log=lambda s: None)
    payload = json.loads((out / "capacity.json").read_text())
    assert "warm-up failed" in payload["errors"]["merged"] and "multilora" not in payload["errors"]
    assert [p["n"] for p in payload["curves"]["merged"]] == [1]  # the point found before the failure is kept
    assert [p["n"] for p in payload["curves"]["multilora"]] == [1, 30, 100]
    # the failed run is not read as an SLO miss: no merged run with 100 adapters was tried after it
    assert not any(c[0] == "merged" and c[2] == 100 for c in runner.calls)


def test_sweep_engines_accept_names_lists_and_external_json():
    from harness.commands.sweep import parse_engines

    got = parse_engines(["multilora,merged", '{"name": "vllm", "kind": "external", "url": "http://127.0.0.1:8000"}'])
    assert got[:2] == ("multilora", "merged")
    assert got[2] == {"name": "vllm", "kind": "external", "url": "http://127.0.0.1:8000"}


@pytest.mark.parametrize("args,message", [
    (["--adapters", "0,3"], "--adapters: [0, 3] must all be >= 1"),
    (["--max-runs", "1"], "--max-runs: 1 must be >= 2"),
    (["--duration", "-2"], "--duration: -2.0 must be > 0 seconds"),
])
def test_sweep_errors_name_the_flag_as_typed(capsys, args, message):
    from harness.cli import main

    assert main(["sweep", WORKLOAD, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"harness sweep: error: {message}") and len(err.splitlines()) == 1
