"""The report's Fleet section reads simulate/plan JSON files and shows their tables."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from fixtures_runs import make_runs

from harness.cli import main
from reports.fleet_view import load_simulations, results_table

APP = str(Path(__file__).resolve().parents[1] / "reports" / "app.py")
CPU_RUN = "docs/results/simulate/cpu/20261129-204046-bursty30-multilora"


def test_fleet_section_shows_a_simulation_and_a_plan(tmp_path):
    sims = tmp_path / "sims"
    sims.mkdir()
    assert main(["simulate", "--run", CPU_RUN, "--replicas", "1,2", "--policy", "affinity,random",
                 "--json", str(sims / "sim.json")]) == 0
    plan = {"plans": [{"engine": "multilora", "adapters_per_gpu": 50, "gpus": 4, "usd_per_m_tokens": 0.3}],
            "simulated": {"target": 0.9, "requests": 100, "run": "r", "rows": [
                {"policy": "affinity", "gpus": 3, "adapters_per_gpu": 66.7, "usd_per_m_tokens": 0.25}]}}
    (sims / "plan.json").write_text(json.dumps(plan))
    (sims / "other.json").write_text("{}")
    found = load_simulations(sims)
    assert [p.name for p, _ in found] == ["plan.json", "sim.json"]
    df = results_table(found[1][1])
    assert list(df["replicas"]) == [1, 1, 2, 2] and df["TTFT p50 ms"].gt(0).all()
    runs = tmp_path / "runs"
    make_runs(runs)
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["runs_root"] = str(runs)
    at.session_state["sims_root"] = str(sims)
    at.run()
    at.sidebar.radio(key="section").set_value("Fleet").run()
    assert not at.exception, at.exception
    tables = [t.value for t in at.dataframe]
    assert any("answer" in t.columns and "simulated, affinity" in set(t["answer"]) for t in tables)
    assert any("policy" in t.columns and set(t["policy"]) == {"affinity", "random"} for t in tables)
    assert any("is not modelled" in c.value for c in at.caption)  # what a simulated fleet leaves out
