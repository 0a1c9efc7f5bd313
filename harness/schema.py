"""The run-directory contract shared by `harness run`, the reports, the planner and the gate.

A run directory (runs/<YYYYmmdd-HHMMSS>-<workload>-<engine>/) holds:
  config.json     the resolved workload spec and engine config (what actually ran)
  trace.csv       the trace replayed: request_id, t (intended send, s from start), adapter,
                  prompt_tokens, output_tokens
  records.jsonl   one JSON record per request, appended as each finishes (survives a crash)
  records.parquet the same records as a table, written at the end (absent if the run died hard)
  gpu.csv         GPU samples: t, gpu, util_pct, mem_used_gb, power_w, energy_j (empty without a GPU)
  server.csv      /metrics scrapes, long: t, metric, labels, value (harness/server_metrics.py maps them)
  summary.json    every metric of DESIGN.md, overall, per adapter and per window (SUMMARY_KEYS)
  env.json        versions, GPU name, driver, git revision, host
  status.json     {"status": one of RUN_STATUSES, "message": str, "records": n}
"""
from __future__ import annotations

RUN_FILES = {
    "config": "config.json",
    "trace": "trace.csv",
    "records_jsonl": "records.jsonl",
    "records": "records.parquet",
    "gpu": "gpu.csv",
    "server": "server.csv",
    "summary": "summary.json",
    "env": "env.json",
    "status": "status.json",
}

RUN_STATUSES = ("running", "completed", "interrupted", "server_died", "error")

# One record per request of the trace; times are seconds from the run's start (monotonic clock).
RECORD_FIELDS = (
    "request_id",  # int, row of the trace
    "adapter",  # str ("" for the base model)
    "intended_send",  # float s
    "actual_send",  # float s, NaN if not sent
    "first_token",  # float s, NaN if none
    "end",  # float s, NaN if not sent
    "token_times",  # list[float] s, one per token (a chunk of k tokens: k equal gaps)
    "prompt_tokens",  # int, from the server's usage (trace value if the server gave none)
    "output_tokens",  # int, from the server's usage
    "status",  # "ok" | "error" | "timeout" | "rejected" (503: the server's queue was full) | "not_sent"
    "http_status",  # int, 0 if no response
    "error",  # str, "" when ok
    "in_window",  # bool: intended_send inside the measured window (after warm-up)
)

# written by `harness run` beside RECORD_FIELDS (readers must not require them)
RECORD_EXTRA_FIELDS = (
    "released",  # float s: when the load generator's scheduler handed the request to a user (NaN if never)
    "first_chunk_tokens",  # int: tokens in the first streamed chunk (ITL gaps start after them)
    "requested_output_tokens",  # int: output tokens the trace asked for
)

RECORD_STATUSES = ("ok", "error", "timeout", "rejected", "not_sent")

# summary.json top-level keys
SUMMARY_KEYS = ("workload", "engine", "model", "gpu", "started_at", "status", "valid", "invalid_reasons",
                "measured_s", "warmup_s", "counts", "metrics", "per_adapter", "windows", "slo")

# written by `harness run` beside SUMMARY_KEYS: engine_kind, gpu_info {available, reason}, loadgen (the load
# generator's own counts), server_scrape {rows, errors, last_error}
SUMMARY_EXTRA_KEYS = ("engine_kind", "gpu_info", "loadgen", "server_scrape")

# summary["metrics"] keys (seconds for latencies; None when undefined)
METRIC_KEYS = (
    "req_s", "output_tok_s", "goodput_req_s", "goodput", "slo_attainment", "served_tok_s",
    "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99",
    "e2e_p50", "e2e_p90", "e2e_p99", "itl_p50", "itl_p99",
    "ttft_mean", "ttft_std", "tpot_mean", "tpot_std", "e2e_mean", "e2e_std", "itl_mean", "itl_std",
    "schedule_lag_p50", "schedule_lag_p99", "schedule_lag_max",
    "jain_fairness", "gpu_util_mean", "gpu_mem_max_gb", "energy_j", "energy_per_token_j",
)
# summary["measured_s"]: the measured span throughput divides by (docs/loadgen.md, "Windows")
# summary["windows"]: {"bin_s": float, "t": [...], "output_tok_s": [...], "req_s": [...], "goodput": [...]}: the
#   measured span in bins, measured ok requests only (harness.metrics.windows)
# summary["counts"]: {"total", "sent", "ok", "error", "timeout", "rejected", "not_sent"};
# total == ok+error+timeout+rejected+not_sent
