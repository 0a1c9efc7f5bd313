"""Counters of the built-in server's /metrics samples in a run's server.csv (long: t, metric, labels, value; or the
wide layout of older runs), in total or per fleet replica (the `replica` label)."""
from __future__ import annotations

import pandas as pd

from harness.server_metrics import parse_labels

WHOLE = ""  # the key of a server's samples that carry no replica label


def counter_by_replica(server: pd.DataFrame | None, metric: str) -> dict[str, tuple[float, float]]:
    """(first, last) value of a counter per replica label, over the run's scrapes; {} when never scraped."""
    if server is None or server.empty:
        return {}
    if {"t", "metric", "labels", "value"} <= set(server.columns):
        rows = server[server["metric"] == metric].sort_values("t", kind="stable")
        if rows.empty:
            return {}
        keys = [parse_labels("" if pd.isna(x) else str(x)).get("replica", WHOLE) for x in rows["labels"]]
        series = rows.assign(replica=keys).groupby("replica", sort=True)["value"]
        return {str(k): (float(v.iloc[0]), float(v.iloc[-1])) for k, v in series}
    if metric not in server.columns:
        return {}
    values = server.sort_values("t", kind="stable")[metric].dropna()
    return {WHOLE: (float(values.iloc[0]), float(values.iloc[-1]))} if len(values) else {}


def counter_total(server: pd.DataFrame | None, metric: str) -> float:
    """The counter's last value summed over replicas (0 when never scraped)."""
    return sum(last for _, last in counter_by_replica(server, metric).values())


def has_counter(server: pd.DataFrame | None, metric: str) -> bool:
    """Whether the server exported the metric at all."""
    return bool(counter_by_replica(server, metric))


def pace_by_replica(server: pd.DataFrame | None, t0: float, t1: float) -> dict[str, dict[str, float]]:
    """Per replica label, from the step and token counters scraped within [t0, t1] (the measured window): ms per
    engine step and generated tokens/s (the counters' growth over the span between the first and last scrape);
    {} without two scrapes of the step counter there. A sampled step time would over-weight long steps."""
    if server is None or server.empty or not {"t", "metric", "labels", "value"} <= set(server.columns):
        return {}
    inside = server[(server["t"] >= t0) & (server["t"] <= t1)]
    spans = {m: _spans(inside, m) for m in ("lora_fleet_steps", "lora_fleet_tokens_generated")}
    out = {}
    for replica, (ta, tb, steps) in spans["lora_fleet_steps"].items():
        if tb > ta and steps > 0:
            tokens = spans["lora_fleet_tokens_generated"].get(replica)
            out[replica] = {"ms_per_step": 1e3 * (tb - ta) / steps,
                            "tok_s": tokens[2] / (tokens[1] - tokens[0]) if tokens and tokens[1] > tokens[0] else 0.0}
    return out


def _spans(rows: pd.DataFrame, metric: str) -> dict[str, tuple[float, float, float]]:
    """(first t, last t, growth) of a counter per replica label."""
    rows = rows[rows["metric"] == metric].sort_values("t", kind="stable")
    keys = [parse_labels("" if pd.isna(x) else str(x)).get("replica", WHOLE) for x in rows["labels"]]
    return {str(k): (float(g["t"].iloc[0]), float(g["t"].iloc[-1]), float(g["value"].iloc[-1] - g["value"].iloc[0]))
            for k, g in rows.assign(replica=keys).groupby("replica", sort=True)}
