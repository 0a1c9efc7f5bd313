"""Streamlit report app: runs, compare, timeline, adapters and capacity + planner, read from run directories."""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run reports/app.py` runs this file as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import streamlit as st

from harness import planner
from harness.plan_text import plan_sweep
from harness.provenance import gpu_type, sweep_provenance
from harness.schema import RUN_FILES
from reports import data, fleet_view, labels, views

RUNS_ENV, SWEEPS_ENV = "LORA_FLEET_RUNS_DIR", "LORA_FLEET_SWEEPS_DIR"
FILTERS = ("workload", "engine", "model", "gpu")


@st.cache_resource(show_spinner=False)
def _load_runs(root: str, stamp: tuple) -> list:
    return [data.load(p) for p, _ in stamp]


def load_runs(root: str) -> list:
    """Every run under root, reloaded when a run's status changes (stamp = paths and status.json mtimes)."""
    paths = data.find_runs(root)
    stamp = tuple((str(p), os.path.getmtime(p / RUN_FILES["status"])) for p in paths)
    return _load_runs(root, stamp)


def sidebar(table: pd.DataFrame) -> tuple[str, pd.DataFrame, list[str]]:
    """Section choice, filters and the runs chosen to compare."""
    st.sidebar.title("LoRA fleet report")
    start = st.query_params.get("section", "Runs")  # deep link: ?section=Compare
    names = list(SECTIONS)
    section = st.sidebar.radio("Section", names, index=names.index(start) if start in names else 0, key="section")
    chosen = {}
    for col in FILTERS:
        options = sorted(v for v in table[col].dropna().unique() if v != "")
        chosen[col] = st.sidebar.multiselect(col, options, key=f"filter_{col}")
    dates = table["started_at"].dropna().dt.date
    date_from = date_to = None
    if not dates.empty:
        picked = st.sidebar.date_input("date range", (dates.min(), dates.max()), key="filter_dates")
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            date_from, date_to = picked
    filtered = data.filter_runs(table, **chosen, date_from=date_from, date_to=date_to)
    latest = filtered["workload"].iloc[0] if not filtered.empty else None
    default = filtered[filtered["workload"] == latest]["run"].head(6).tolist()
    compare = st.sidebar.multiselect("runs to compare", filtered["run"].tolist(), default=default, key="compare")
    return section, filtered, compare


UNITS = "Latencies in ms; failed = errors + timeouts + requests never sent, as `harness run` counts them."


def page_runs(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Runs")
    st.caption(f"{len(table)} runs match the filters; choose runs to compare in the sidebar. {UNITS}")
    st.dataframe(labels.humanize(table.drop(columns=["path"])), hide_index=True)


def log_toggle() -> bool:
    return st.toggle("log-scale latency axes", value=True, key="log_axes",
                     help="ms-scale engines stay visible beside one that takes seconds")


def page_compare(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Compare")
    chosen = [runs[name] for name in compare if name in runs]
    if not chosen:
        st.info("Choose runs to compare in the sidebar.")
        return
    sel = data.runs_table(chosen)
    st.caption(UNITS)
    st.dataframe(labels.humanize(sel[["run", "engine", "offered_req_s", "req_s", "output_tok_s", "goodput",
                                      "slo_attainment", "ttft_mean", "ttft_p50", "ttft_p99", "tpot_mean", "tpot_p50",
                                      "tpot_p99", "e2e_mean", "e2e_p50", "e2e_p99", "failed"]]), hide_index=True)
    for fig in views.compare(chosen, log=log_toggle()):
        st.plotly_chart(fig)


def _one_run(runs: dict, table: pd.DataFrame, compare: list[str], key: str):
    names = compare or table["run"].tolist()
    if not names:
        st.info("No run matches the filters.")
        return None
    return runs[st.selectbox("run", names, key=key)]


def page_timeline(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Timeline")
    run = _one_run(runs, table, compare, "timeline_run")
    if run is None:
        return
    bin_s = st.select_slider("bin (s)", options=[0.5, 1.0, 2.0, 5.0, 10.0], value=1.0, key="timeline_bin")
    start, end = data.measured_window(run)
    st.caption(f"Grey: the warm-up [0, {start:g}) s, not measured; green: the measured span [{start:g}, {end:.4g}) s.")
    for fig in views.timeline(run, bin_s):
        st.plotly_chart(fig)


def page_adapters(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Adapters")
    run = _one_run(runs, table, compare, "adapters_run")
    if run is None:
        return
    fairness = (run.summary.get("metrics") or {}).get("jain_fairness")
    st.metric("Jain's fairness over adapters", "n/a" if fairness is None else f"{fairness:.3f}")
    st.dataframe(labels.humanize(data.adapter_table(run)), hide_index=True)
    for fig in views.adapters(run):
        st.plotly_chart(fig)


def planner_inputs(measured_gpu: str | None) -> tuple[int, float, str, float, float]:
    c1, c2, c3, c4, c5 = st.columns(5)
    adapters = int(c1.number_input("adapters", min_value=1, value=500, step=10, key="plan_adapters"))
    rate = float(c2.number_input("req/s per adapter", min_value=1e-4, value=0.05, step=0.01, format="%.4f",
                                 key="plan_rate"))
    names = list(planner.GPU_PRICES)
    gpu = c3.selectbox("GPU", names, index=names.index(measured_gpu) if measured_gpu in names else 0, key="plan_gpu")
    price = float(c4.number_input("$ / GPU-hour", min_value=0.01, value=planner.GPU_PRICES[gpu], step=0.1,
                                  key=f"plan_price_{gpu}"))
    window = float(c5.number_input("peak window (s)", min_value=0.5, value=10.0, step=1.0, key="plan_window"))
    st.caption("Default \\$/GPU-hour (edit the price above): "
               + ", ".join(f"{k} \\${v:.2f}" for k, v in planner.GPU_PRICES.items()))
    return adapters, rate, gpu, price, window


def page_capacity(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Capacity")
    sweeps = data.find_sweeps(st.session_state["runs_root"], st.session_state["sweeps_root"])
    if not sweeps:
        st.info("No capacity.json found: run `harness sweep WORKLOAD --over rate --out sweeps/` first.")
        return
    folder = st.selectbox("sweep", list(sweeps), key="sweep")
    payload = sweeps[folder]
    provenance = sweep_provenance(folder, payload)
    st.markdown("**Measured on:** " + "; ".join(
        f"{engine}: {p.get('machine')}, model {p.get('model')}, workload {p.get('workload')}"
        for engine, records in provenance.items() for p in records))
    st.caption(f"SLO attainment target {payload.get('target')}, resolution {payload.get('resolution')}")
    for engine, message in (payload.get("errors") or {}).items():
        st.warning(f"{engine}: the sweep stopped early: {message}")
    measured = {gpu_type(p.get("gpu"), planner.GPU_PRICES) for records in provenance.values() for p in records}
    adapters, rate, gpu, price, window = planner_inputs(next(iter(measured)) if len(measured) == 1 else None)
    for fig in views.capacity(payload, rate):
        st.plotly_chart(fig)
    points = data.capacity_points(payload)
    st.markdown("**λ\\*(N) as found** — [lo, hi]: lo met the SLO, hi did not; >= lo: a lower bound (the search "
                "stopped before a miss, or the load generator could not go faster); < hi: an upper bound.")
    st.dataframe(labels.humanize(points[["engine", "n", "capacity", "bound", "goodput_tok_s", "runs_tried",
                                         "limited_runs", "reason"]]), hide_index=True)
    st.subheader("Planner")
    st.markdown("\n".join(f"- {f}".replace("$", "\\$") for f in planner.FORMULAS))  # $ is not LaTeX here
    try:
        plan, text = plan_sweep(folder, payload, adapters=adapters, rate_per_adapter=rate, gpu=gpu, price=price,
                                window_s=window)
    except ValueError as exc:
        st.error(f"cannot plan from {folder}: {exc}")
        return
    if plan["extrapolation"]:
        st.warning(plan["extrapolation"])
    cols = st.columns(len(plan["plans"]))
    for col, p in zip(cols, plan["plans"]):
        col.metric(f"{p['engine']}: GPUs", "n/a" if p["gpus"] is None else p["gpus"])
        col.metric(f"{p['engine']}: $ / 1M output tokens",
                   "n/a" if p["usd_per_m_tokens"] is None else f"{p['usd_per_m_tokens']:.3f}")
        if p["note"]:
            col.caption(p["note"])
    plans = pd.DataFrame(plan["plans"])[["engine", "adapters_per_gpu", "gpus", "usd_per_hour", "usd_per_m_tokens",
                                         "note"]]
    st.dataframe(labels.humanize(plans), hide_index=True)
    if plan["comparison"]:
        st.markdown(f"Peaks over {window:g} s windows: aggregate {plan['peaks']['aggregate_peak']:.3g} req/s, "
                    f"sum of per-adapter peaks {plan['peaks']['sum_of_peaks']:.3g} req/s.")
    with st.expander("The plan as `harness plan` prints it (shared base vs dedicated, in sentences)", expanded=True):
        st.code(text, language=None)
    if plan["comparison"]:
        comp = pd.DataFrame(plan["comparison"])
        keep = [c for c in ("engine", "shared_gpus", "dedicated_gpus_whole", "dedicated_gpus_shares",
                            "dedicated_engine", "note") if c in comp.columns]
        st.dataframe(comp[keep].rename(columns={
            "shared_gpus": "shared base GPUs", "dedicated_gpus_whole": "dedicated: a whole GPU each",
            "dedicated_gpus_shares": "dedicated: shares packed (optimistic)",
            "dedicated_engine": "dedicated engine"}), hide_index=True)
    elif not payload.get("spec"):
        st.caption("no shared-vs-dedicated comparison: this sweep stored no workload spec")


SECTIONS = {"Runs": page_runs, "Compare": page_compare, "Timeline": page_timeline, "Adapters": page_adapters,
            "Capacity": page_capacity, "Fleet": fleet_view.page_fleet}


def main() -> None:
    st.set_page_config(page_title="LoRA fleet report", layout="wide")
    st.session_state.setdefault("runs_root", os.environ.get(RUNS_ENV, "runs"))
    st.session_state.setdefault("sweeps_root", os.environ.get(SWEEPS_ENV, "sweeps"))
    root = st.session_state["runs_root"]
    try:
        with st.spinner(f"Reading the run directories under {root} ..."):  # a cold first load is not blank
            loaded = load_runs(root)
    except FileNotFoundError as exc:
        st.error(str(exc))
        return
    runs = {data.label(r): r for r in loaded}
    table = data.runs_table(loaded)
    section, filtered, compare = sidebar(table)
    SECTIONS[section](runs, filtered, compare)


main()
