"""fleet_compare over a real CPU layout: a single-replica run of `tiny` and a 2-replica Ray Serve fleet run of the
same workload at twice the rate, the fleet attached as an external engine named fleet-affinity."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.serve", reason='the fleet needs Ray Serve: pip install -e ".[fleet]"')

from engines.adapters.synth import make_adapters  # noqa: E402
from engines.config import EngineConfig  # noqa: E402
from engines.fleet.launch import start_fleet, stop_fleet  # noqa: E402
from engines.model.config import ModelArgs  # noqa: E402
from engines.server.state import ServerOptions  # noqa: E402
from harness.runner import run_engine  # noqa: E402
from harness.simulate.fleet_compare import main  # noqa: E402
from harness.spec import load_workload  # noqa: E402
from tests.test_run_e2e import workload  # noqa: E402

pytestmark = pytest.mark.e2e

TRAFFIC = {"popularity": {"kind": "zipf", "s": 1.0}, "arrivals": {"kind": "onoff", "mean_on_s": 1.0, "mean_off_s": 1.0},
           "prompt_tokens": {"kind": "uniform", "low": 4, "high": 12},
           "output_tokens": {"kind": "uniform", "low": 2, "high": 6}}


def test_fleet_compare_on_a_cpu_single_run_and_a_two_replica_fleet_run(tmp_path, capsys):
    adapters = tmp_path / "adapters"
    make_adapters(ModelArgs.from_name("tiny"), 4, [4], ["q_proj", "v_proj"], adapters)
    runs = tmp_path / "runs"
    common = {"adapters": {"count": 4, "ranks": [4], "targets": ["q_proj", "v_proj"], "path": str(adapters)},
              "duration_s": 6.0, "warmup_s": 1.0}
    single = load_workload(workload(tmp_path, **common, traffic={**TRAFFIC, "rate": 6.0}, engines=["multilora"]))
    run_engine(single, single.engine_list()[0], runs, progress=False, log=lambda s: None)
    config = EngineConfig(model="tiny", adapters=str(adapters), max_num_seqs=8, num_kv_blocks=128, cuda_graphs=False)
    try:
        url = start_fleet(config, ServerOptions(), 2, 4, "127.0.0.1", 0, routing="affinity",
                          ray_init={"num_cpus": 2, "object_store_memory": 200 << 20})
        fleet = load_workload(workload(tmp_path, **common, traffic={**TRAFFIC, "rate": 12.0},
                                       engines=[{"name": "fleet-affinity", "kind": "external", "url": url}]))
        run_engine(fleet, fleet.engine_list()[0], runs, progress=False, log=lambda s: None)
    finally:
        stop_fleet()
    out = tmp_path / "compare.json"
    assert main([str(runs), "--out", str(out)]) == 0
    assert "routing affinity, 2 replicas (from server samples)" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["fleets"]
    assert row["policy"] == "affinity" and row["replicas"] == 2 and row["requests"] == len(fleet_trace(runs))
    loads = row["measured"]["adapter_loads"]  # each replica's own counter
    assert len(loads) == 2 and 1 <= sum(loads) <= 2 * 4  # each adapter loads at most once a replica (K = 4)
    sim = row["simulated"]
    assert sum(sim["affinity"]["adapter_loads"]) <= sum(sim["round_robin"]["adapter_loads"])
    assert row["measured"]["output_tok_s"] > 0 and sim["affinity"]["output_tok_s"] > 0


def fleet_trace(runs):
    from harness.trace import read_trace

    (path,) = [p for p in runs.iterdir() if p.name.endswith("fleet-affinity")]
    return read_trace(path / "trace.csv")
