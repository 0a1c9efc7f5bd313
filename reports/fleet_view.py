"""The report's Fleet section: simulated fleets (`harness simulate --json`, `harness plan --simulate --json`),
read from JSON files only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from harness.simulate.model import SCOPE

SIMS_ENV = "LORA_FLEET_SIMS_DIR"


def load_simulations(root: str | Path) -> list[tuple[Path, dict]]:
    """Every simulation result under root: a simulate --json file (results) or a plan --json with simulated."""
    out = []
    for path in sorted(Path(root).rglob("*.json")) if Path(root).is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ("results" in data and "model" in data or "simulated" in data):
            out.append((path, data))
    return out


def results_table(data: dict) -> pd.DataFrame:
    """One row per simulated (policy, R): throughput, latency percentiles in ms, SLO attainment, adapter loads."""
    rows = []
    for r in data.get("results", []):
        m = r["metrics"]
        rows.append({"policy": r["policy"], "replicas": r["replicas"], "req/s": m["req_s"],
                     "output tok/s": m["output_tok_s"], "TTFT p50 ms": _ms(m["ttft_p50"]),
                     "TTFT p99 ms": _ms(m["ttft_p99"]), "TPOT p50 ms": _ms(m["tpot_p50"]),
                     "TPOT p99 ms": _ms(m["tpot_p99"]), "SLO attainment": m["slo_attainment"],
                     "adapter loads": r["adapter_loads_total"], "max loads on a replica": max(r["adapter_loads"]),
                     "$/1M tokens": r.get("usd_per_1m_tokens")})
    return pd.DataFrame(rows)


def plan_table(data: dict) -> pd.DataFrame:
    """The planner's ceil() rows beside the simulated smallest fleet per policy."""
    rows = [{"answer": f"ceil(), {p['engine']}", "adapters/GPU": p["adapters_per_gpu"], "GPUs": p["gpus"],
             "$/1M tokens": p["usd_per_m_tokens"]} for p in data.get("plans", [])]
    rows += [{"answer": f"simulated, {r['policy']}", "adapters/GPU": r["adapters_per_gpu"], "GPUs": r["gpus"],
              "$/1M tokens": r["usd_per_m_tokens"]} for r in data["simulated"]["rows"]]
    return pd.DataFrame(rows)


def _ms(v):
    return None if v is None else v * 1e3


def page_fleet(runs: dict, table: pd.DataFrame, compare: list[str]) -> None:
    st.header("Fleet (simulated)")
    st.caption(SCOPE)
    st.session_state.setdefault("sims_root", os.environ.get(SIMS_ENV, "simulations"))
    root = st.text_input("folder of simulation JSON files", key="sims_root")
    sims = load_simulations(root)
    if not sims:
        st.info(f"No simulation under {root!r}: write one with `harness simulate --run RUN --json {root}/sim.json` "
                f"or `harness plan ... --simulate RUN --json {root}/plan.json`.")
        return
    for path, data in sims:
        st.subheader(path.name)
        if "simulated" in data:
            sim = data["simulated"]
            st.caption(f"smallest fleet with SLO attainment >= {sim['target']:g} on {sim['requests']} requests of the "
                       f"planned trace; replica model fitted from {sim['run']}")
            st.dataframe(plan_table(data), hide_index=True)
            continue
        st.caption(f"{data['requests']} requests; replica model fitted from {data['model'].get('source', '?')}; "
                   "latencies in ms")
        df = results_table(data)
        st.dataframe(df, hide_index=True)
        if df["replicas"].nunique() > 1:
            fig = px.line(df, x="replicas", y="TTFT p99 ms", color="policy", markers=True, log_y=True,
                          title="TTFT p99 against replicas, per routing policy")
            st.plotly_chart(fig)
