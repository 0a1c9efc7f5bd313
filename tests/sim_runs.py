"""A step-by-step engine with known costs, and run directories (single server or fleet) written from its records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.schema import RECORD_FIELDS, RUN_FILES
from harness.simulate.model import ServiceModel
from tests.fixtures_runs import summarize

SLO = {"ttft_s": 1.0, "tpot_s": 0.2}


def emulate(model: ServiceModel, arrivals, seed=0, mixed: bool = False) -> pd.DataFrame:
    """Records with token times of an engine with the model's costs, prefill-first or with mixed steps (a step
    decodes the running requests and prefills every arrival); arrivals are (t, adapter, prompt, output[, id])."""
    rng = np.random.default_rng(seed)
    pending = sorted(a if len(a) == 5 else (*a, k) for k, a in enumerate(arrivals))
    t, running, rows, i = 0.0, [], [], 0
    while i < len(pending) or running:
        ready = [a for a in pending[i:] if a[0] <= t]
        if ready:
            i += len(ready)
            t += model.prefill_step_s(sum(a[2] for a in ready), len(ready))
            if mixed:
                t += model.decode_s(len(running), len({r["adapter"] for r in running}))
                for r in running:
                    r["times"].append(t)
                    r["left"] -= 1
            for a in ready:
                running.append({"arr": a[0], "adapter": a[1], "prompt": a[2], "left": a[3] - 1, "times": [t],
                                "id": a[4]})
        elif running:
            t += model.decode_s(len(running), len({r["adapter"] for r in running}))
            for r in running:
                r["times"].append(t)
                r["left"] -= 1
        else:
            t = pending[i][0]
            continue
        for r in [r for r in running if r["left"] <= 0]:
            running.remove(r)
            rows.append({"request_id": r["id"], "adapter": r["adapter"], "intended_send": r["arr"],
                         "actual_send": r["arr"], "first_token": r["times"][0], "end": r["times"][-1],
                         "token_times": r["times"], "prompt_tokens": r["prompt"], "output_tokens": len(r["times"]),
                         "status": "ok", "http_status": 200, "error": ""})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def poisson_trace(rate: float, seconds: float, adapters: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.5)))
    t = t[t < seconds]
    n = len(t)
    return pd.DataFrame({"request_id": np.arange(n), "t": np.round(t, 6),
                         "adapter": [f"adapter-{k:04d}" for k in rng.integers(0, adapters, n)],
                         "prompt_tokens": rng.integers(20, 300, n), "output_tokens": rng.integers(10, 60, n)})


def write_run(root: Path, name: str, engine: dict, trace: pd.DataFrame, records: pd.DataFrame,
              server: pd.DataFrame, *, warmup_s: float, duration_s: float) -> Path:
    """A completed run directory as `harness run` writes it (server: long samples t, metric, labels, value)."""
    run = Path(root) / name
    run.mkdir(parents=True)
    rec = records.sort_values("request_id").reset_index(drop=True)
    rec["in_window"] = (rec["intended_send"] >= warmup_s) & (rec["intended_send"] < warmup_s + duration_s)
    rec = rec[list(RECORD_FIELDS)]
    spec = {"name": "synthetic", "seed": 0, "duration_s": duration_s, "warmup_s": warmup_s, "model": "tiny",
            "slo": SLO}
    (run / RUN_FILES["config"]).write_text(json.dumps({"workload": spec, "engine": engine}))
    trace.to_csv(run / RUN_FILES["trace"], index=False)
    rec.to_parquet(run / RUN_FILES["records"], index=False)
    server.to_csv(run / RUN_FILES["server"], index=False)
    summary = summarize(rec, workload="synthetic", engine=engine["name"], model="tiny", gpu="NVIDIA H200",
                        started_at="2026-11-29T10:00:00+00:00", window_s=duration_s, warmup_s=warmup_s, slo=SLO)
    (run / RUN_FILES["summary"]).write_text(json.dumps(summary))
    (run / RUN_FILES["status"]).write_text(json.dumps({"status": "completed", "message": "", "records": len(rec)}))
    return run


def loads_samples(per_replica: dict[str, list[float]], labelled: bool = True) -> pd.DataFrame:
    """Long server samples of lora_fleet_adapter_loads, one scrape a second, per replica label."""
    rows = [{"t": float(k), "metric": "lora_fleet_adapter_loads", "labels": f'replica="{r}"' if labelled else "",
             "value": v} for r, values in per_replica.items() for k, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["t", "metric", "labels", "value"])
