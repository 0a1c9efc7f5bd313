"""One engine's run end to end: trace, adapters, server, warm-up, Locust load with samplers, records, summary."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from harness import env_info
from harness.gpu import GpuSampler
from harness.loadgen.chunks import prompt_ids
from harness.loadgen.launch import LoadgenProcess
from harness.metrics import summarize
from harness.progress import RecordProgress
from harness.scrape import MetricsScraper
from harness.server_proc import ServerError, ServerProcess
from harness.engine_spec import EngineEntry, parse_engine_entry
from harness.spec import WorkloadSpec, machine_has_cuda
from harness.store import RunWriter
from harness.trace import build_trace

ADAPTER_CACHE = Path(".cache/adapters")
SERVER_READY_TIMEOUT_S = 600.0
WARMUP_TIMEOUT_S = 300.0


# ---------------------------------------------------------------------------- engines: how each kind is served

def prepare_adapters(spec: WorkloadSpec, log: Callable[[str], None]) -> Path | None:
    """The adapters folder to serve: the workload's own, or synthetic ones cached under .cache/adapters/."""
    if spec.adapters.path is not None:
        return Path(spec.adapters.path)
    if spec.adapters.count == 0:
        return None
    from engines.adapters.synth import make_adapters
    from engines.model.config import PRESETS, ModelArgs

    if spec.model in PRESETS:
        args = ModelArgs.from_name(spec.model)
    else:
        args = ModelArgs.from_hf_config(json.loads((Path(spec.model) / "config.json").read_text()), name=spec.model)
    key = json.dumps([spec.model, spec.adapters.count, list(spec.adapters.ranks), list(spec.adapters.targets)])
    out = ADAPTER_CACHE / f"{Path(spec.model).name}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    t = time.monotonic()
    jobs = min(16, os.cpu_count() or 1) if spec.adapters.count >= 64 else 1  # thousands take minutes alone
    make_adapters(args, spec.adapters.count, list(spec.adapters.ranks), list(spec.adapters.targets), out, jobs=jobs,
                  base_path=None if spec.model in PRESETS else str(Path(spec.model).resolve()))
    log(f"adapters: {spec.adapters.count} synthetic (ranks {list(spec.adapters.ranks)}) in {out} "
        f"({time.monotonic() - t:.1f} s)")
    return out


class InProcessLauncher:
    """`python -m engines.server --engine NAME ...` on 127.0.0.1 and a free port."""

    def __init__(self, engine: dict[str, Any], spec: WorkloadSpec, run_dir: Path, log: Callable[[str], None]):
        self.engine, self.spec, self.run_dir, self.log = engine, spec, run_dir, log
        self.server: ServerProcess | None = None

    def start(self) -> str:
        adapters = prepare_adapters(self.spec, self.log)
        replicas = int(self.engine.get("replicas", 1))  # > 1: a Ray Serve fleet, same flags
        server = ["harness", "serve", "--replicas", str(replicas)] if replicas > 1 else ["engines.server"]
        cmd = [sys.executable, "-m", *server, "--engine", self.engine["name"], "--model", self.spec.model,
               "--host", "127.0.0.1", "--port", "0"]
        if adapters is not None:
            cmd += ["--adapters", str(adapters)]
        if self.engine.get("options"):
            cmd += ["--engine-config", json.dumps(self.engine["options"])]
        self.server = ServerProcess(cmd, self.run_dir / "server.log", ready_timeout_s=SERVER_READY_TIMEOUT_S)
        return self.server.start()

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def log_tail(self) -> str:
        return self.server.log_tail() if self.server else ""


class StubLauncher(InProcessLauncher):
    """The load generator's stub server (no model): options are its flags (ttft_ms, token_delay_ms, ...)."""

    def start(self) -> str:
        cmd = [sys.executable, "-m", "harness.loadgen.stub_server", "--host", "127.0.0.1", "--port", "0",
               "--model", self.spec.model, "--adapters", ",".join(self.spec.adapters.names())]
        for key, value in self.engine.get("options", {}).items():
            flag = "--" + key.replace("_", "-")
            cmd += [flag] if value is True else ([] if value is False else [flag, str(value)])
        self.server = ServerProcess(cmd, self.run_dir / "server.log", ready_timeout_s=60)
        return self.server.start()


class ExternalLauncher:
    """Any OpenAI-compatible server: attach to a URL, or launch a preset through engines.external."""

    def __init__(self, engine: dict[str, Any], spec: WorkloadSpec, run_dir: Path, log: Callable[[str], None]):
        self.engine, self.spec, self.run_dir, self.log = engine, spec, run_dir, log
        self.server = None

    def start(self) -> str:
        try:
            from engines.external import ExternalServer
        except ImportError as exc:
            raise ServerError(f"external engines need engines.external ({exc})") from None
        cfg = {k: v for k, v in self.engine.items() if k not in ("name", "kind", "label")}
        cfg.setdefault("model", self.spec.model)
        cfg.setdefault("log_path", str(self.run_dir / "server.log"))
        if "url" not in cfg:
            adapters = prepare_adapters(self.spec, self.log)
            if adapters is not None:
                cfg.setdefault("adapters", str(adapters))
        self.server = ExternalServer(cfg, log=self.log)
        return self.server.start().rstrip("/")

    def alive(self) -> bool:
        check = getattr(self.server, "alive", None)
        return bool(check()) if callable(check) else True

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def log_tail(self) -> str:
        path = self.run_dir / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:]) if path.is_file() else ""


LAUNCHERS: dict[str, type] = {"inprocess": InProcessLauncher, "stub": StubLauncher, "external": ExternalLauncher}


# ---------------------------------------------------------------------------- HTTP helpers

def _get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def served_models(url: str, fallback: str) -> tuple[str, set[str] | None]:
    """(the base model's name, every served name) from GET /v1/models; (fallback, None) if it cannot be read."""
    try:
        data = _get_json(url + "/v1/models").get("data", [])
    except (OSError, ValueError, AttributeError):
        return fallback, None
    names = {str(m.get("id")) for m in data}
    bases = [str(m.get("id")) for m in data if not m.get("parent")]
    base = fallback if fallback in bases or not bases else bases[0]
    return base, names


def warm_up(url: str, models: list[str], timeout_s: float = WARMUP_TIMEOUT_S) -> None:
    """A few short requests before the clock starts (first-call compilation, lazy loading)."""
    for i, model in enumerate(models):
        body = json.dumps({"model": model, "prompt": prompt_ids(10_000_000 + i, 8), "max_tokens": 2,
                           "temperature": 0.0}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ServerError(f"warm-up request for model {model!r} failed: HTTP {exc.code} "
                              f"{exc.read().decode(errors='replace')[:300]}") from None


# ---------------------------------------------------------------------------- the run

def run_engine(spec: WorkloadSpec, engine: str | dict[str, Any] | EngineEntry, runs_root: str | Path = "runs", *,
               log: Callable[[str], None] = print, progress: bool = True, workers: int | None = None,
               percentiles: tuple[float, ...] = ()) -> Path:
    """Run the workload against one engine; returns its run directory (status.json says how it ended).

    A spec not yet resolved for a machine is resolved for this one; workers overrides loadgen.workers.
    KeyboardInterrupt is re-raised after the run directory is complete (status "interrupted").
    """
    if spec.resolution.machine is None:
        spec = spec.for_machine(machine_has_cuda())
    if workers is not None:
        spec = spec.with_overrides({"loadgen.workers": workers}, {"loadgen.workers": f"--workers {workers}"})
    eng = parse_engine_entry(engine, "--engine", engine_options=spec.engine_options,
                             model=spec.resolution.external_model or spec.model).to_dict()
    trace = build_trace(spec)
    writer = RunWriter(runs_root, spec.name, eng["label"])
    run_dir = writer.path
    env = env_info.collect()
    writer.write_json("env", env)
    lg = spec.loadgen
    writer.write_json("config", {"workload": spec.to_dict(), "resolution": spec.resolution.to_dict(),
                                 "engine": eng, "loadgen": lg.to_dict(),
                                 "trace": {"requests": len(trace), "horizon_s": spec.horizon_s}})
    writer.write_trace(trace)
    launcher = LAUNCHERS[eng["kind"]](eng, spec, run_dir, log)
    gpu = GpuSampler()
    scraper: MetricsScraper | None = None
    loadgen: LoadgenProcess | None = None
    bar: RecordProgress | None = None
    status, message, interrupted = "completed", "", False
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        log(f"[{eng['label']}] starting server ({eng['kind']}) ...")
        url = launcher.start()
        base, names = served_models(url, spec.model)
        wanted = sorted(set(trace["adapter"]) - {""})
        if names is not None and not set(wanted) <= names:
            missing = sorted(set(wanted) - names)
            raise ServerError(f"the server does not serve adapter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                              f" that the trace uses; it serves {sorted(names)[:5]} ...")
        log(f"[{eng['label']}] serving at {url}; warming up")
        warm_up(url, [base] + wanted[:2])
        gpu.start()
        scraper = MetricsScraper(url + "/metrics").start()
        loadgen = LoadgenProcess(run_dir / "trace.csv", url, writer.file("records_jsonl"), base,
                                 warmup_s=spec.warmup_s, users=lg.users, workers=lg.workers,
                                 request_timeout_s=lg.request_timeout_s, drain_timeout_s=lg.drain_timeout_s,
                                 log_path=run_dir / "loadgen.log").start()
        bar = RecordProgress(writer.file("records_jsonl"), len(trace), f"[{eng['label']}]", enabled=progress).start()
        while loadgen.running() and launcher.alive():
            loadgen.wait(0.2)
        if not launcher.alive():
            status, message = "server_died", f"the server exited during the load:\n{launcher.log_tail()}"
        loadgen.interrupt()
        if status == "completed" and (loadgen.result or {}).get("write_error"):
            status, message = "error", f"error: {loadgen.result['write_error']}"
        elif status == "completed" and (loadgen.result is None or loadgen.proc.returncode not in (0, None)):
            status, message = "error", (f"the load generator died (exit {loadgen.proc.returncode}); requests in "
                                        f"flight are recorded as 'client died':\n{loadgen.log_tail()}")
        elif status == "completed":
            message = f"load generator: {loadgen.result.get('reason')}"
    except KeyboardInterrupt:
        status, message, interrupted = "interrupted", "interrupted by the user (Ctrl-C)", True
    except ServerError as exc:
        status, message = "error", str(exc)
    except Exception as exc:  # the run directory must still say what happened
        status, message = "error", f"{type(exc).__name__}: {exc}"
    finally:
        try:
            if loadgen is not None:
                loadgen.interrupt()
            if bar is not None:
                bar.stop()
            if scraper is not None and launcher.alive():
                scraper.finish()  # a last scrape after the load: counters include the last requests
            elif scraper is not None:
                scraper.stop()
            gpu.stop()
            launcher.stop()
        except KeyboardInterrupt:
            interrupted, status, message = True, "interrupted", "interrupted by the user (Ctrl-C) while stopping"
        _finish(writer, status, message, spec, eng, trace, env, gpu, scraper, loadgen, started_at, percentiles)
    if status in ("error", "server_died"):  # the cause with the last lines of the server's log
        log(f"[{eng['label']}] {status}: {message}")
    if interrupted:
        raise KeyboardInterrupt
    return run_dir


def one_line(message: str) -> str:
    """A multi-line failure (a headline and the end of a log) as one line: the headline and the log's last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


def _finish(writer: RunWriter, status: str, message: str, *args: Any) -> None:
    """Write the run's results, even through a second Ctrl-C (raised once they are written); a failed write
    (disk full, folder gone read-only) ends the run as "error" with the OS error, leaving what was written
    readable (status.json is rewritten in place)."""
    interrupted = False
    while True:
        try:
            _write_results(writer, status, message, *args)
            break
        except OSError as exc:
            writer.set_status("error", message if status == "error" else f"error: {exc}")
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _write_results(writer: RunWriter, status: str, message: str, spec: WorkloadSpec, eng: dict[str, Any], trace,
                   env: dict[str, Any], gpu: GpuSampler, scraper: MetricsScraper | None,
                   loadgen: LoadgenProcess | None, started_at: str, percentiles: tuple[float, ...] = ()) -> None:
    t0 = loadgen.t0 if loadgen is not None and loadgen.t0 is not None else time.monotonic()
    reason = {"completed": "the load generator ended first", "interrupted": "the run was interrupted",
              "server_died": "the server died"}.get(status, "the run failed")
    records = writer.finalize_records(trace, spec.warmup_s, reason)
    gpu_df = gpu.frame(t0)
    writer.write_samples("gpu", gpu_df)
    writer.write_samples("server", scraper.frame(t0) if scraper is not None else gpu_df.iloc[:0, :1])
    body = summarize(records, warmup_s=spec.warmup_s, duration_s=spec.duration_s, slo=spec.slo.limits(),
                     max_lag_p99_s=spec.loadgen.max_lag_p99_s, gpu=gpu_df, percentiles=percentiles)
    if status != "completed":
        body["valid"] = False
        body["invalid_reasons"] = [f"run {status}: {one_line(message)}"] + body["invalid_reasons"]
    summary = {"workload": spec.name, "engine": eng["label"], "model": spec.model, "gpu": env.get("gpu_name"),
               "started_at": started_at, "status": status, "slo": spec.slo.to_dict(), **body,
               "engine_kind": eng["kind"], "gpu_info": {"available": gpu.available, "reason": gpu.reason},
               "loadgen": loadgen.result if loadgen is not None else None,
               "server_scrape": {"rows": len(scraper.rows), "errors": scraper.errors, "last_error": scraper.last_error}
               if scraper is not None else None}
    writer.write_json("summary", summary)
    writer.set_status(status, message, records=len(records))
