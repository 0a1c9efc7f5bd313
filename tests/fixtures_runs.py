"""Writes small, realistic run directories (harness/schema.py layout) and sweep folders for the report tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.metrics import summarize as metrics_summarize
from harness.schema import METRIC_KEYS, RECORD_FIELDS, RUN_FILES, SUMMARY_KEYS

SLO = {"ttft_s": 2.0, "tpot_s": 0.5}


def _records(rng: np.random.Generator, trace: pd.DataFrame, speed: float, warmup_s: float) -> pd.DataFrame:
    rows = []
    for r in trace.itertuples():
        send = r.t + float(rng.uniform(0.0005, 0.004))
        ttft = float(rng.uniform(0.05, 0.4)) / speed + (1.5 if r.request_id % 17 == 5 else 0.0)
        tpot = float(rng.uniform(0.02, 0.08)) / speed
        status = "error" if r.request_id % 29 == 7 else "ok"
        if status == "ok":
            first = send + ttft
            times = [first + k * tpot for k in range(int(r.output_tokens))]
            end, out, err, code = times[-1], int(r.output_tokens), "", 200
        else:
            first, times, end, out, err, code = float("nan"), [], send + 0.01, 0, "500: engine failed", 500
        rows.append({"request_id": int(r.request_id), "adapter": r.adapter, "intended_send": float(r.t),
                     "actual_send": send, "first_token": first, "end": end, "token_times": times,
                     "prompt_tokens": int(r.prompt_tokens), "output_tokens": out, "status": status,
                     "http_status": code, "error": err, "in_window": bool(r.t >= warmup_s)})
    return pd.DataFrame(rows, columns=list(RECORD_FIELDS))


def summarize(rec: pd.DataFrame, *, workload: str, engine: str, model: str, gpu: str, started_at: str,
              window_s: float, warmup_s: float, slo: dict, gpu_df: pd.DataFrame | None = None) -> dict:
    """summary.json as harness run writes it: harness.metrics.summarize plus what ran, every SUMMARY_KEY."""
    body = metrics_summarize(rec, warmup_s=warmup_s, duration_s=window_s, slo=slo, max_lag_p99_s=0.05, gpu=gpu_df)
    out = {"workload": workload, "engine": engine, "model": model, "gpu": gpu, "started_at": started_at,
           "status": "completed", "slo": slo, **body}
    assert set(SUMMARY_KEYS) <= set(out) and set(METRIC_KEYS) <= set(out["metrics"])
    return out


def make_run(root: Path, *, engine: str = "multilora", workload: str = "bursty30", model: str = "tiny",
             gpu: str = "NVIDIA H100 80GB HBM3", adapters: int = 4, rate: float = 4.0, duration_s: float = 12.0,
             warmup_s: float = 2.0, speed: float = 1.0, seed: int = 0,
             started_at: str = "2026-11-22T10:00:00+00:00") -> Path:
    """One completed run: bursty per-adapter arrivals, latencies scaled by 1/speed, GPU and server samples."""
    rng = np.random.default_rng(seed)
    names = [f"adapter-{i:04d}" for i in range(adapters)]
    total = warmup_s + duration_s
    n = int(rate * total)
    burst = rng.integers(0, adapters, size=n)  # bursts: each second one adapter dominates
    t = np.sort(rng.uniform(0, total, size=n))
    adapter = [names[burst[int(x)] if rng.random() < 0.7 else rng.integers(0, adapters)] for x in t]
    trace = pd.DataFrame({"request_id": np.arange(n), "t": np.round(t, 6), "adapter": adapter,
                          "prompt_tokens": rng.integers(8, 48, size=n), "output_tokens": rng.integers(4, 16, size=n)})
    rec = _records(rng, trace, speed, warmup_s)
    stamp = started_at[:19].replace("-", "").replace(":", "").replace("T", "-")
    run = Path(root) / f"{stamp}-{workload}-{engine}"
    run.mkdir(parents=True, exist_ok=False)
    spec = {"name": workload, "seed": seed, "duration_s": duration_s, "warmup_s": warmup_s, "model": model,
            "adapters": {"count": adapters, "ranks": [8, 16], "targets": ["q_proj", "v_proj"]},
            "traffic": {"rate": rate, "popularity": {"kind": "zipf", "s": 1.1},
                        "arrivals": {"kind": "onoff", "mean_on_s": 3.0, "mean_off_s": 12.0},
                        "prompt_tokens": {"kind": "uniform", "low": 8, "high": 48},
                        "output_tokens": {"kind": "uniform", "low": 4, "high": 16}},
            "slo": SLO, "engines": [engine]}
    (run / RUN_FILES["config"]).write_text(json.dumps({"workload": spec, "engine": {"name": engine}}, indent=1))
    trace.to_csv(run / RUN_FILES["trace"], index=False)
    with open(run / RUN_FILES["records_jsonl"], "w") as f:
        for r in rec.to_dict("records"):
            f.write(json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()})
                    + "\n")
    rec.to_parquet(run / RUN_FILES["records"], index=False)
    ts = np.arange(0.0, total, 0.5)
    gpu_df = pd.DataFrame({"t": ts, "gpu": 0, "util_pct": np.clip(40 + 40 * np.sin(ts) * speed, 0, 100),
                           "mem_used_gb": 20 + 0.1 * ts, "power_w": 300 + 10 * np.cos(ts),
                           "energy_j": np.cumsum(np.full_like(ts, 150.0))})
    gpu_df.to_csv(run / RUN_FILES["gpu"], index=False)
    wide = pd.DataFrame({"t": ts, "lora_fleet_adapters_resident": np.minimum(adapters, 1 + (ts // 2)).astype(int),
                         "lora_fleet_adapter_loads": (ts // 2).astype(int),
                         "lora_fleet_adapter_evictions": (ts // 5).astype(int),
                         "lora_fleet_queue_depth": rng.integers(0, 5, size=len(ts)),
                         "lora_fleet_running": rng.integers(0, 8, size=len(ts))})
    wide.melt(id_vars=["t"], var_name="metric", value_name="value").assign(labels="")[
        ["t", "metric", "labels", "value"]].to_csv(run / RUN_FILES["server"], index=False)  # long, as harness.scrape
    summary = summarize(rec, workload=workload, engine=engine, model=model, gpu=gpu, started_at=started_at,
                        window_s=duration_s, warmup_s=warmup_s, slo=SLO, gpu_df=gpu_df)
    (run / RUN_FILES["summary"]).write_text(json.dumps(summary, indent=1))
    (run / RUN_FILES["env"]).write_text(json.dumps({"python": "3.11", "torch": "2.13", "gpu": gpu, "git": "test"}))
    (run / RUN_FILES["status"]).write_text(json.dumps({"status": "completed", "message": "", "records": len(rec)}))
    return run


def make_runs(root: Path) -> list[Path]:
    """Three engines on one workload and one more run of another workload, as a runs/ folder holds them."""
    root = Path(root)
    return [
        make_run(root, engine="multilora", speed=2.0, seed=1),
        make_run(root, engine="merged", speed=1.0, seed=2, started_at="2026-11-22T10:05:00+00:00"),
        make_run(root, engine="peft", speed=0.5, seed=3, started_at="2026-11-22T10:10:00+00:00"),
        make_run(root, engine="multilora", workload="steady", gpu="cpu", speed=1.5, seed=4,
                 started_at="2026-11-21T09:00:00+00:00"),
    ]


def make_sweep(root: Path, engines: tuple[str, ...] = ("multilora", "merged"), spec: dict | None = None,
               name: str = "sweep-bursty30", gpu: str | None = "NVIDIA H100 80GB HBM3", model: str = "llama3-8b"
               ) -> Path:
    """A sweep folder with capacity.json: λ*(N) = c / (1 + N/30) per engine, each point a bracket
    [λ*, 1.05 λ*], as `harness sweep` writes it; one run directory per engine holds env.json and config.json
    (gpu None: measured on a CPU)."""
    sweep = Path(root) / name
    sweep.mkdir(parents=True, exist_ok=True)
    curves = {}
    for k, engine in enumerate(engines):
        c = 12.0 / (k + 1)
        run = Path("runs") / f"20261122-100000-bursty30-{engine}"
        (sweep / run).mkdir(parents=True, exist_ok=True)
        (sweep / run / RUN_FILES["env"]).write_text(json.dumps({"host": "box", "cpu_count": 16, "gpu_name": gpu}))
        (sweep / run / RUN_FILES["config"]).write_text(json.dumps(
            {"workload": {"name": "bursty30", "model": model}, "engine": {"name": engine, "kind": "inprocess"}}))
        curves[engine] = [{"n": n, "lambda_star": round(c / (1 + n / 30), 4), "goodput_tok_s":
                           round(c / (1 + n / 30) * 120.0, 3), "attainment": 0.93, "run": str(run), "converged": True,
                           "bound": "bracket", "upper": round(1.05 * c / (1 + n / 30), 4),
                           "reason": "", "tried": [{"load": 1.0, "attainment": 1.0, "goodput_tok_s": 120.0,
                                                    "run": str(run), "note": "", "pass": True, "limited": False}]}
                          for n in (1, 10, 30, 100)]
    payload = {"workload": "bursty30", "over": "rate", "target": 0.9, "resolution": 0.1,
               "spec": spec, "curves": curves}
    (sweep / "capacity.json").write_text(json.dumps(payload, indent=1))
    return sweep
