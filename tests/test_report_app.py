"""Each section of the Streamlit report on small run directories: no exception, the expected numbers shown."""
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from fixtures_runs import make_runs, make_sweep

APP = str(Path(__file__).resolve().parents[1] / "reports" / "app.py")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    paths = make_runs(runs)
    sweeps = tmp_path_factory.mktemp("sweeps")
    make_sweep(sweeps)
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads" / "bursty30.yaml").read_text())
    make_sweep(sweeps, spec=spec, name="sweep-with-spec")
    return runs, sweeps, paths


def app(roots, section: str | None = None) -> AppTest:
    runs, sweeps, _ = roots
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["runs_root"] = str(runs)
    at.session_state["sweeps_root"] = str(sweeps)
    at.run()
    assert not at.exception, at.exception
    if section:
        at.sidebar.radio(key="section").set_value(section).run()
        assert not at.exception, at.exception
    return at


def decode(v):
    """A plotly JSON array: a plain list, or numpy's typed array {"dtype", "bdata", "shape"}."""
    if isinstance(v, dict):
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return arr.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else arr
    return np.asarray(v, dtype=float)


def summary(path):
    return json.loads((Path(path) / "summary.json").read_text())


def test_runs_page_lists_every_run_and_filters(roots):
    at = app(roots)
    df = at.dataframe[0].value
    assert len(df) == 4 and set(df["engine"]) == {"multilora", "merged", "peft"}
    # default compare selection: the latest workload's runs
    assert sorted(at.sidebar.multiselect(key="compare").value) == sorted(
        p.name for p in roots[2][:3])
    at.sidebar.multiselect(key="filter_workload").set_value(["steady"]).run()
    df = at.dataframe[0].value
    assert list(df["workload"]) == ["steady"]
    assert df["output tok/s"].iloc[0] == pytest.approx(summary(roots[2][3])["metrics"]["output_tok_s"])
    at.sidebar.multiselect(key="filter_workload").set_value([]).run()
    at.sidebar.multiselect(key="filter_engine").set_value(["peft", "merged"]).run()
    assert sorted(at.dataframe[0].value["engine"]) == ["merged", "peft"]


def test_compare_page_shows_metrics_and_charts(roots):
    at = app(roots, "Compare")
    df = at.dataframe[0].value.set_index("run")
    for p in roots[2][:3]:
        m = summary(p)["metrics"]
        s = summary(p)
        assert df.loc[p.name, "output tok/s"] == pytest.approx(m["output_tok_s"])
        assert df.loc[p.name, "SLO met %"] == pytest.approx(100 * m["slo_attainment"])
        assert df.loc[p.name, "TTFT p99 (ms)"] == pytest.approx(1000 * m["ttft_p99"])  # ms, as the CLI prints
        c = s["counts"]  # the same failed count as the CLI: requests never sent included
        assert df.loc[p.name, "failed (errors + timeouts + never sent)"] == c["error"] + c["timeout"] + c["not_sent"]
    charts = at.get("plotly_chart")
    assert len(charts) == 6  # throughput/goodput, attainment, percentiles, 3 CDFs
    specs = [json.loads(c.proto.spec) for c in charts]
    titles = [f["layout"]["title"]["text"] for f in specs]
    assert "TTFT CDF" in titles and "Throughput and goodput" in titles
    cdf = specs[titles.index("TTFT CDF")]
    assert cdf["layout"]["xaxis"]["type"] == "log"  # ms engines stay visible beside slow ones
    slo = [sh for sh in cdf["layout"]["shapes"] if sh.get("line", {}).get("color") == "red"]
    assert slo and slo[0]["x0"] == pytest.approx(2000.0)  # the TTFT SLO of the runs, in ms
    at.toggle(key="log_axes").set_value(False).run()
    cdf = json.loads(at.get("plotly_chart")[3].proto.spec)
    assert cdf["layout"]["xaxis"].get("type") != "log"


def test_timeline_page(roots):
    at = app(roots, "Timeline")
    charts = at.get("plotly_chart")
    assert len(charts) == 5
    spec = json.loads(charts[0].proto.spec)
    assert spec["data"][0]["type"] == "heatmap"
    # the heatmap counts every request of the chosen run
    run = at.selectbox(key="timeline_run").value
    total = summary(next(p for p in roots[2] if p.name == run))["counts"]["total"]
    count = np.nansum(decode(spec["data"][0]["z"]))
    assert count == total


def test_adapters_page(roots):
    at = app(roots, "Adapters")
    run = at.selectbox(key="adapters_run").value
    s = summary(next(p for p in roots[2] if p.name == run))
    assert at.metric[0].value == f"{s['metrics']['jain_fairness']:.3f}"
    df = at.dataframe[0].value
    assert set(df["adapter"]) == set(s["per_adapter"])
    assert df["share of requests %"].sum() == pytest.approx(100.0)
    assert len(at.get("plotly_chart")) == 2


def test_capacity_page_and_planner(roots):
    at = app(roots, "Capacity")
    assert len(at.get("plotly_chart")) == 1
    metrics = {m.label: m.value for m in at.metric}
    # make_sweep: multilora λ*(N) = 12/(1+N/30); 500 adapters at 0.05/s -> 62 adapters per GPU -> 9 GPUs
    from harness.planner import Curve, plan_engine
    payload = json.loads((roots[1] / "sweep-bursty30" / "capacity.json").read_text())
    want = plan_engine(Curve.from_points("multilora", payload["curves"]["multilora"]), 500, 0.05, 2.5)
    assert metrics["multilora: GPUs"] == str(want.gpus)
    assert metrics["multilora: $ / 1M output tokens"] == f"{want.usd_per_m_tokens:.3f}"
    assert any("ceil(total rate / per-GPU capacity)" in m.value for m in at.markdown)
    at.number_input(key="plan_price_h100").set_value(5.0).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["multilora: $ / 1M output tokens"] == f"{2 * want.usd_per_m_tokens:.3f}"


def test_missing_runs_folder_is_an_error_on_the_page(tmp_path):
    at = AppTest.from_file(APP, default_timeout=30)
    at.session_state["runs_root"] = str(tmp_path / "nope")
    at.session_state["sweeps_root"] = str(tmp_path)
    at.run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def test_capacity_page_compares_shared_and_dedicated_from_the_trace(roots):
    at = app(roots, "Capacity")
    at.selectbox(key="sweep").set_value(str(roots[1] / "sweep-with-spec")).run()
    assert not at.exception, at.exception
    comp = at.dataframe[-1].value.set_index("engine")
    assert "A share is the fraction of one GPU" in at.code[0].value
    assert "Measured on:" in at.markdown[0].value
    from harness import planner
    payload = json.loads((roots[1] / "sweep-with-spec" / "capacity.json").read_text())
    trace = planner.planned_trace(payload["spec"], 500, 0.05)
    want = planner.plan_fleet(payload["curves"], 500, 0.05, 2.5, trace=trace, window_s=10.0)
    for row in want["comparison"]:
        got = comp.loc[row["engine"]]
        assert got["shared base GPUs"] == row["shared_gpus"]
        assert got["dedicated: a whole GPU each"] == row["dedicated_gpus_whole"]
        # bursty per-adapter traffic: dedicated deployments need more GPUs than one shared base
        assert row["dedicated_gpus_whole"] > row["shared_gpus"]
    assert any("sum of per-adapter peaks" in m.value for m in at.markdown)


def capacity_page(tmp_path, engines: tuple, edit) -> tuple[AppTest, dict]:
    """The Capacity section on one sweep whose capacity.json `edit` changed."""
    runs = tmp_path / "runs"
    make_runs(runs)
    sweep = make_sweep(tmp_path / "sweeps", engines=engines)
    payload = json.loads((sweep / "capacity.json").read_text())
    edit(payload)
    (sweep / "capacity.json").write_text(json.dumps(payload))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["runs_root"] = str(runs)
    at.session_state["sweeps_root"] = str(tmp_path / "sweeps")
    at.run()
    at.sidebar.radio(key="section").set_value("Capacity").run()
    assert not at.exception, at.exception
    return at, payload


def test_capacity_page_with_an_unusable_curve_says_why(tmp_path):
    def edit(payload):
        for p in payload["curves"]["multilora"]:
            p["n"] = 0  # an adapter sweep in which no adapter count met the SLO
        payload["errors"] = {"merged": "runs/x could not run: warm-up failed"}

    at, _ = capacity_page(tmp_path, ("multilora",), edit)
    assert "no adapter count met the SLO" in at.error[0].value
    assert "merged: the sweep stopped early" in at.warning[0].value


def test_capacity_page_shows_bounds_and_labels_another_gpu_an_extrapolation(tmp_path):
    at, payload = capacity_page(tmp_path, ("multilora", "merged"),
                                lambda payload: payload["curves"]["merged"][0].update(bound="lower", upper=None))
    assert at.selectbox(key="plan_gpu").value == "h100"  # the GPU the sweep ran on
    points = at.dataframe[0].value
    lam = payload["curves"]["merged"][0]["lambda_star"]
    assert f">= {lam:.4g}" in set(points["λ* as found (req/s)"])  # visible in the table, not only a tooltip
    assert set(points["how λ* is known"]) == {"bracket", "lower"}
    assert not at.warning
    at.selectbox(key="plan_gpu").set_value("l40s").run()
    assert any("EXTRAPOLATION: priced as l40s" in w.value for w in at.warning)
