"""Human column names with units for every table the report shows: latencies in ms (as the CLI), shares in %."""
from __future__ import annotations

import re

import pandas as pd

NAMES = {
    "run": "run", "workload": "workload", "engine": "engine", "model": "model", "gpu": "GPU",
    "started_at": "started", "status": "status", "valid": "valid", "adapter": "adapter",
    "offered_req_s": "offered req/s", "req_s": "req/s", "output_tok_s": "output tok/s", "goodput": "goodput tok/s",
    "goodput_req_s": "goodput req/s", "slo_attainment": "SLO met %", "jain_fairness": "fairness (Jain)",
    "requests": "requests", "ok": "ok", "error": "errors", "timeout": "timeouts", "not_sent": "never sent",
    "failed": "failed (errors + timeouts + never sent)", "share": "share of requests %",
    "n": "adapters N", "lambda_star": "λ* req/s", "capacity": "λ* as found (req/s)", "bound": "how λ* is known",
    "goodput_tok_s": "goodput at λ* tok/s", "attainment": "SLO met % at λ*", "runs_tried": "runs",
    "limited_runs": "runs limited by the load generator", "reason": "how the search stopped",
    "adapters_per_gpu": "adapters per GPU", "gpus": "GPUs", "usd_per_hour": "$ per hour",
    "usd_per_m_tokens": "$ per 1M output tokens", "per_gpu_capacity": "req/s per GPU", "total_rate": "total req/s",
    "note": "note",
}
_LATENCY = re.compile(r"^(ttft|tpot|e2e|itl|schedule_lag)_(p[0-9.]+|mean|std|max)$")
_PERCENT = {"slo_attainment", "share", "attainment"}


def name(column: str) -> str:
    """The human name of a column: `ttft_p99` -> `TTFT p99 (ms)`, `slo_attainment` -> `SLO met %`."""
    m = _LATENCY.match(column)
    if m:
        what = {"schedule_lag": "schedule lag"}.get(m.group(1), m.group(1).upper())
        stat = {"std": "sd"}.get(m.group(2), m.group(2))
        return f"{what} {stat} (ms)"
    return NAMES.get(column, column.replace("_", " "))


def humanize(df: pd.DataFrame) -> pd.DataFrame:
    """The table to show: latencies (stored in s) in ms, fractions in %, columns renamed by name()."""
    out = df.copy()
    for col in out.columns:
        if _LATENCY.match(col):
            out[col] = pd.to_numeric(out[col], errors="coerce") * 1000.0
        elif col in _PERCENT:
            out[col] = pd.to_numeric(out[col], errors="coerce") * 100.0
    return out.rename(columns={c: name(c) for c in out.columns})
