"""The run comparison for the console (fits 120 columns, ms throughout) and the combined results.csv/.json."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

LATENCIES = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E"), ("itl", "ITL"))
WIDTH = 120


def _f(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def failed(counts: dict) -> int:
    """Requests that did not complete: errors, timeouts and requests never sent (as the report counts them)."""
    return sum(int(counts.get(k) or 0) for k in ("error", "timeout", "not_sent"))


def offered_rate(run) -> float | None:
    """Requests/s the trace offered in the measured window (summary offered_req_s)."""
    return (run.summary or {}).get("offered_req_s")


def header(spec, runs: list | None = None) -> str:
    """What ran and what it was held to: offered rate, adapters, model, window and every SLO threshold."""
    slo = spec.slo.to_dict()
    limits = [f"{label} <= {slo[key] * 1000:g} ms" for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"),
                                                                      ("e2e_s", "E2E")) if slo.get(key) is not None]
    target = slo.get("attainment")
    offered = next((r for r in (offered_rate(x) for x in runs or []) if r is not None), None)
    rate = f"{offered:.3g} req/s offered" if offered is not None else f"{spec.traffic.mean_rate or 0:.3g} req/s"
    lines = [f"{spec.name}: {rate} over {spec.adapters.count} adapters, model {spec.model}, "
             f"{spec.duration_s:g} s measured after {spec.warmup_s:g} s warm-up",
             "SLO: " + (", ".join(limits) or "none") + (f"; attainment target {target:.0%}" if target else "")]
    return "\n".join(line[:WIDTH] for line in lines)


def _row_cells(run) -> list[str]:
    s = run.summary or {}
    m, c = s.get("metrics") or {}, s.get("counts") or {}
    att = m.get("slo_attainment")
    return [str(s.get("engine", "?"))[:14], str((run.status or {}).get("status", "?"))[:11],
            "yes" if s.get("valid") else "no", _f(m.get("req_s")), _f(m.get("output_tok_s"), ".1f"),
            _f(m.get("goodput"), ".1f"), "-" if att is None else f"{att * 100:.1f}", _f(m.get("jain_fairness"), ".3f"),
            f"{failed(c)}/{c.get('total', 0)}"]


ROW_HEAD = ["engine", "status", "valid", "req/s", "out tok/s", "goodput tok/s", "SLO met %", "fairness",
            "failed/total"]
ROW_WIDTHS = [14, 11, 5, 8, 10, 13, 9, 8, 12]


def _line(cells, widths) -> str:
    return "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(cells, widths)))


def percentile_labels(runs: list) -> list[str]:
    """The percentiles the summaries hold (p50, p90, p99 and any asked with --percentiles), in order."""
    labels = {"p50", "p90", "p99"} | {p for r in runs for p in (r.summary or {}).get("percentiles") or []}
    return sorted(labels, key=lambda p: float(p[1:]))


def engine_block(run, labels: list[str], with_head: bool = False) -> str:
    """One engine: its throughput row, then its latencies in ms (mean, sd and the percentiles)."""
    lines = [_line(ROW_HEAD, ROW_WIDTHS), "-" * len(_line(ROW_HEAD, ROW_WIDTHS))] if with_head else []
    lines.append(_line(_row_cells(run), ROW_WIDTHS))
    m = (run.summary or {}).get("metrics") or {}
    head = ["  latency ms", "mean", "sd", *labels]
    col = max(6, min(9, (WIDTH - 12) // (len(head) - 1) - 2))  # as many percentiles as fit in WIDTH
    widths = [12] + [col] * (len(head) - 1)
    lines.append(_line(head, widths))
    for key, label in LATENCIES:
        cells = [f"  {label}", _ms(m.get(f"{key}_mean")), _ms(m.get(f"{key}_std")),
                 *(_ms(m.get(f"{key}_{p}")) for p in labels)]
        lines.append(_line(cells, widths))
    return "\n".join(line[:WIDTH] for line in lines)


def comparison_table(runs: list) -> str:
    """Every engine's block under one header; failed = errors + timeouts + requests never sent."""
    labels = percentile_labels(runs)
    blocks = [engine_block(r, labels, with_head=(i == 0)) for i, r in enumerate(runs)]
    return "\n".join(blocks + ["failed = errors + timeouts + requests never sent; latencies of completed "
                               "measured requests, in ms"])


def result_rows(runs: list) -> list[dict]:
    """One flat row per run: what ran, the offered rate, every summary metric (latencies in ms), the counts."""
    rows = []
    for r in runs:
        s = r.summary or {}
        row = {"engine": s.get("engine"), "run_dir": str(r.path), "status": (r.status or {}).get("status"),
               "valid": bool(s.get("valid")), "offered_req_s": offered_rate(r)}
        for key, value in (s.get("metrics") or {}).items():
            if key.startswith(("ttft_", "tpot_", "e2e_", "itl_", "schedule_lag_")):
                row[f"{key}_ms"] = None if value is None else value * 1000
            else:
                row[key] = value
        counts = s.get("counts") or {}
        row.update({f"requests_{k}": v for k, v in counts.items()}, failed=failed(counts),
                   invalid_reasons="; ".join(s.get("invalid_reasons") or []))
        rows.append(row)
    return rows


def write_results(runs: list, spec, runs_dir: str | Path) -> tuple[Path, Path]:
    """<runs_dir>/<time>-<workload>-results.csv and .json: every engine of this invocation in one file."""
    stem = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}-results"
    rows = result_rows(runs)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"workload": spec.name, "model": spec.model, "adapters": spec.adapters.count,
                                     "slo": spec.slo.to_dict(), "runs": rows}, indent=1))
    return csv_path, json_path
