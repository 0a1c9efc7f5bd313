"""Sweeps: a series of runs that finds λ*(N) per engine (or N* at a fixed rate) and writes capacity.json."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from harness.capacity import Probe, SearchConfig, iter_capacity_curve, search_max

OVER = ("rate", "adapters")
CAPACITY_FILE = "capacity.json"
DEFAULT_TARGET = 0.9


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep. over="rate": for each N in `adapters`, search the largest total rate λ*(N);
    over="adapters": for each rate in `rates`, search the largest adapter count N* that still meets the SLO."""

    workload: str
    over: str = "rate"
    engines: tuple = ()  # names or engine dicts (as harness run takes them); empty: the workload's engines
    adapters: tuple[int, ...] = ()  # empty: the workload's adapter count
    rates: tuple[float, ...] = ()  # empty: the workload's rate (over="adapters")
    target: float | None = None  # SLO attainment a load must reach: None = the workload's slo.attainment, else 0.9
    resolution: float = 0.1  # relative for rates, absolute (adapters) for adapter counts
    max_runs: int = 12  # per search (one N or one rate)
    max_adapters: int = 4096  # the adapter search never goes beyond this
    duration_s: float | None = None  # shorter measured window per run, if given
    workers: int | None = None  # Locust worker processes per run (None: the workload's loadgen setting)
    out: str = "sweeps"

    def __post_init__(self) -> None:
        if self.over not in OVER:
            raise ValueError(f"over: {self.over!r} must be one of {OVER}")
        if any(n < 1 for n in self.adapters):
            raise ValueError(f"adapters: {list(self.adapters)} must all be >= 1")
        if any(r <= 0 for r in self.rates):
            raise ValueError(f"rates: {list(self.rates)} must all be > 0 requests/s")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers: {self.workers} must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError(f"duration_s: {self.duration_s} must be > 0 seconds")
        SearchConfig(target=DEFAULT_TARGET if self.target is None else self.target, resolution=self.resolution,
                     max_probes=self.max_runs)


class RunFailed(RuntimeError):
    """The harness could not run a point at all (status "error": the engine failed to start or to warm up).
    That says nothing about capacity, so the engine's search stops instead of reading it as an SLO miss."""


def probe_from_run(summary: dict, status: dict, run: str) -> Probe:
    """A run's SLO attainment and goodput; a run that did not complete or is invalid counts as a failure."""
    m = summary.get("metrics") or {}
    state = (status or {}).get("status", summary.get("status", ""))
    note = ""
    if state != "completed":
        note = f"run {state or 'unknown'}: {(status or {}).get('message', '')}".strip()
    elif not summary.get("valid", False):
        note = "invalid: " + "; ".join(summary.get("invalid_reasons") or ["marked invalid"])
    return Probe(attainment=float(m.get("slo_attainment") or 0.0), goodput_tok_s=float(m.get("goodput") or 0.0),
                 run=run, note=note)


def run_sweep(cfg: SweepConfig, *, run_engine: Callable | None = None, load_run: Callable | None = None,
              has_cuda: bool | None = None, log: Callable[[str], None] = print) -> Path:
    """Run the sweep; every run lands in <sweep>/runs/, capacity.json is rewritten after each search."""
    from harness.spec import load_workload, machine_has_cuda

    if run_engine is None or load_run is None:
        from harness.runner import run_engine
        from harness.store import load_run
    cuda = machine_has_cuda() if has_cuda is None else has_cuda
    base = load_workload(cfg.workload).for_machine(cuda)
    if cfg.duration_s is not None:
        base = base.with_overrides({"duration_s": cfg.duration_s})
    if cfg.target is None:  # the workload may state the attainment it needs; 0.9 otherwise
        cfg = replace(cfg, target=float(base.slo.attainment or DEFAULT_TARGET))
    engines = base.engine_list()
    if cfg.engines:
        known = {e["name"]: e for e in engines}
        engines = [known.get(e, e) if isinstance(e, str) else e for e in cfg.engines]
    sweep_dir = Path(cfg.out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{base.name}-{cfg.over}"
    runs_root = sweep_dir / "runs"
    runs_root.mkdir(parents=True, exist_ok=False)
    payload = {"workload": base.name, "workload_path": str(cfg.workload), "over": cfg.over, "target": cfg.target,
               "resolution": cfg.resolution, "machine": "cuda" if cuda else "cpu",
               "config": asdict(cfg), "spec": base.to_dict(), "curves": {}}
    (sweep_dir / "sweep.json").write_text(json.dumps(asdict(cfg), indent=1))
    try:
        _search_all(cfg, base, engines, sweep_dir, payload, run_engine, load_run, log)
    except BaseException:
        if not any(runs_root.iterdir()):  # nothing ran: leave no empty sweep folder behind
            shutil.rmtree(sweep_dir)
        raise
    return sweep_dir


def _search_all(cfg: SweepConfig, base, engines: list, sweep_dir: Path, payload: dict, run_engine: Callable,
                load_run: Callable, log: Callable[[str], None]) -> None:
    runs_root = sweep_dir / "runs"
    for engine in engines:
        name = engine if isinstance(engine, str) else engine.get("name", "engine")

        def probe(rate: float, n: int, engine=engine) -> Probe:
            spec = base.with_overrides({"traffic.rate": float(rate), "adapters.count": int(n)})
            log(f"sweep: {name} with {int(n)} adapters at {rate:.4g} req/s")
            extra = {"workers": cfg.workers} if cfg.workers is not None else {}
            path = Path(run_engine(spec, engine, runs_root, log=log, progress=False, **extra))
            run = load_run(path)
            if (run.status or {}).get("status") == "error":
                raise RunFailed(f"{name}: {path} could not run: {(run.status or {}).get('message', '')}")
            return probe_from_run(run.summary, run.status, str(path.relative_to(sweep_dir)))

        start = float(base.traffic.rate or 1.0)
        points: list[dict] = []
        payload["curves"][name] = points
        try:
            for point in _points(cfg, base, probe, start):
                points.append(point)
                (sweep_dir / CAPACITY_FILE).write_text(json.dumps(payload, indent=1))
        except RunFailed as exc:
            payload.setdefault("errors", {})[name] = str(exc)
            log(f"sweep: {exc}; no more points for {name}")
        (sweep_dir / CAPACITY_FILE).write_text(json.dumps(payload, indent=1))


def _points(cfg: SweepConfig, base, probe: Callable[[float, int], Probe], start: float):
    """Capacity points one at a time: (N, λ*(N)) per adapter count, or (N*(rate), rate) per rate."""
    if cfg.over == "rate":
        search = SearchConfig(target=cfg.target, resolution=cfg.resolution, start=start, lowest=start / 1024,
                              max_probes=cfg.max_runs)
        for p in iter_capacity_curve(probe, list(cfg.adapters) or [base.adapters.count], search):
            yield p.to_dict()
        return
    for rate in (list(cfg.rates) or [start]):
        search = SearchConfig(target=cfg.target, resolution=max(1.0, cfg.resolution),
                              start=float(base.adapters.count), lowest=1.0, highest=float(cfg.max_adapters),
                              max_probes=cfg.max_runs)
        res = search_max(lambda n, rate=rate: probe(rate, int(n)), search, integer=True)
        d = res.to_dict()
        yield {"n": int(res.best), "lambda_star": float(rate), "goodput_tok_s": d["goodput_tok_s"],
               "attainment": d["attainment"], "run": d["run"], "converged": res.converged, "reason": res.reason,
               "tried": res.tried}


def curve_table(payload: dict) -> str:
    """capacity.json as a plain-text table: engine, N, λ*, goodput, attainment, runs tried, converged."""
    head = f"{'engine':<12} {'N':>6} {'lambda* req/s':>14} {'goodput tok/s':>14} {'attain':>7} {'runs':>5}  note"
    lines = [head, "-" * len(head)]
    for engine, pts in payload.get("curves", {}).items():
        for p in pts:
            att = "" if p.get("attainment") is None else f"{p['attainment']:.3f}"
            lines.append(f"{engine:<12} {p['n']:>6} {p['lambda_star']:>14.4g} {p.get('goodput_tok_s') or 0:>14.4g} "
                         f"{att:>7} {len(p.get('tried', [])):>5}  {p.get('reason', '')}")
    return "\n".join(lines)
