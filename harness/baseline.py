"""Baselines for the regression gate: per-engine, per-metric samples of a set of runs, stored as JSON."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.gate import GateInputError
from harness.schema import METRIC_KEYS, RUN_FILES

FORMAT = "harness-baseline/1"
DEFAULT_DIR = "baselines"
IDENTITY = ("workload", "model", "gpu", "trace_sha256")  # what must match between a baseline and new runs
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunData:
    """What the gate needs from one run directory."""

    path: Path
    engine: str
    workload: str
    model: str
    gpu: str
    started_at: str
    status: str
    valid: bool
    invalid_reasons: list[str]
    metrics: dict[str, Any]
    windows: dict[str, Any]
    trace_sha256: str | None
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)


def _read_baseline_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GateInputError(f"{path}: not valid JSON ({exc}); restore it from git or save the baseline again") from None


def _load(run_dir: Path) -> tuple[dict, dict, dict, str]:
    """summary, config, env and status of a run directory, read through harness.store."""
    from harness.store import RunError, load_run

    if not (run_dir / RUN_FILES["summary"]).is_file():
        raise GateInputError(f"{run_dir}: no {RUN_FILES['summary']}; is this a run directory written by "
                             "`harness run`, and did the run finish?")
    try:
        run = load_run(run_dir)
    except RunError as exc:
        raise GateInputError(str(exc)) from None
    return run.summary, run.config, run.env, str(run.status.get("status", ""))


def read_run(run_dir: str | Path) -> RunData:
    """One run directory -> RunData; a missing or malformed summary raises GateInputError naming the path."""
    path = Path(run_dir)
    summary, config, env, status = _load(path)
    for key in ("workload", "engine", "metrics"):
        if key not in summary:
            raise GateInputError(f"{path / RUN_FILES['summary']}: key {key!r} is missing; "
                                 "re-run with this version of the harness")
    trace = path / RUN_FILES["trace"]
    digest = hashlib.sha256(trace.read_bytes()).hexdigest() if trace.is_file() else None
    return RunData(
        path=path, engine=str(summary["engine"]), workload=str(summary["workload"]),
        model=str(summary.get("model")), gpu=str(summary.get("gpu") or "none"),
        started_at=str(summary.get("started_at", "")), status=status or str(summary.get("status", "")),
        valid=bool(summary.get("valid", False)), invalid_reasons=list(summary.get("invalid_reasons") or []),
        metrics=dict(summary["metrics"]), windows=dict(summary.get("windows") or {}),
        trace_sha256=digest, config=config, env=env,
    )


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run directory, or a folder whose sub-folders are run directories (e.g. --runs-dir)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / RUN_FILES["summary"]).is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if (p / RUN_FILES["summary"]).is_file())
            if not found:
                raise GateInputError(f"{path}: neither a run directory nor a folder of run directories "
                                     f"(no {RUN_FILES['summary']} found)")
            out.extend(found)
        else:
            raise GateInputError(f"{path}: no such run directory")
    if not out:
        raise GateInputError("no run directories given")
    return out


def _usable(run: RunData) -> None:
    if run.status != "completed":
        raise GateInputError(f"run {run.path} has status {run.status!r}, not 'completed'; "
                             "gate only runs that finished")
    if not run.valid:
        reasons = "; ".join(run.invalid_reasons) or "no reason given"
        raise GateInputError(f"run {run.path} is marked invalid ({reasons}); fix the cause and run again")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def snapshot(runs: list[RunData]) -> dict[str, Any]:
    """The baseline document of a set of runs (also what the gate builds from the current runs).

    All runs must be usable and share workload, model, GPU and trace; per engine (runs ordered by start)
    each metric keeps one value per run and, where summary["windows"] has it, the per-window values of each run.
    """
    if not runs:
        raise GateInputError("no runs to summarise")
    for run in runs:
        _usable(run)
    first = runs[0]
    identity = {"workload": first.workload, "model": first.model, "gpu": first.gpu,
                "trace_sha256": first.trace_sha256}
    for run in runs[1:]:
        for key in IDENTITY:
            if getattr(run, key) != identity[key]:
                raise GateInputError(f"runs disagree on {key}: {first.path} has {identity[key]!r}, "
                                     f"{run.path} has {getattr(run, key)!r}; give runs of one workload on one machine")
    engines: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.engine, r.started_at, str(r.path))):
        entry = engines.setdefault(run.engine, {"runs": [], "metrics": {}})
        entry["runs"].append({"dir": str(run.path), "started_at": run.started_at, "status": run.status,
                              "config": run.config, "env": run.env})
    for engine, entry in engines.items():
        ordered = sorted((r for r in runs if r.engine == engine), key=lambda r: (r.started_at, str(r.path)))
        names = [m for m in METRIC_KEYS if any(m in r.metrics for r in ordered)]
        names += sorted({m for r in ordered for m in r.metrics} - set(names))
        for name in names:
            sample: dict[str, Any] = {"per_run": [_number(r.metrics.get(name)) for r in ordered]}
            if all(isinstance(r.windows.get(name), list) for r in ordered):
                sample["per_window"] = [[_number(v) for v in r.windows[name]] for r in ordered]
            entry["metrics"][name] = sample
    bin_s = first.windows.get("bin_s")
    return {"format": FORMAT, **identity, "bin_s": bin_s, "environment": first.env, "engines": engines}


def snapshot_dirs(paths: list[str | Path]) -> dict[str, Any]:
    return snapshot([read_run(p) for p in expand_run_dirs(paths)])


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise GateInputError(f"baseline name {name!r}: use letters, digits, '.', '_' or '-' (e.g. ci-cpu)")
    return name


def baseline_path(name_or_path: str, directory: str | Path = DEFAULT_DIR) -> Path:
    """A path to a .json file as given, else DIR/NAME.json."""
    given = Path(name_or_path)
    if given.suffix == ".json" or given.is_file():
        return given
    return Path(directory) / f"{check_name(name_or_path)}.json"


def save_baseline(doc: dict[str, Any], name: str, directory: str | Path = DEFAULT_DIR,
                  force: bool = False) -> Path:
    path = Path(directory) / f"{check_name(name)}.json"
    if path.exists() and not force:
        raise GateInputError(f"baseline {path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**doc, "name": name, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(stamped, indent=1, sort_keys=False) + "\n")
    return path


def load_baseline(name_or_path: str, directory: str | Path = DEFAULT_DIR) -> dict[str, Any]:
    path = baseline_path(name_or_path, directory)
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(Path(directory).glob("*.json"))) or "none"
        raise GateInputError(f"baseline {path} not found (baselines in {directory}: {known}); "
                             "make one with `harness baseline save RUN... --name NAME`")
    doc = _read_baseline_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GateInputError(f"{path}: not a baseline of format {FORMAT}; save it again with "
                             "`harness baseline save`")
    return doc


def list_baselines(directory: str | Path = DEFAULT_DIR) -> list[dict[str, Any]]:
    return [load_baseline(str(p), directory) for p in sorted(Path(directory).glob("*.json"))]


def check_comparable(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise GateInputError unless the current runs measure the same thing on the same kind of machine."""
    what = {"workload": "workload", "model": "model", "gpu": "GPU",
            "trace_sha256": "trace (the workload file, its seed or the trace generator changed)"}
    for key in IDENTITY:
        if baseline.get(key) != current.get(key):
            raise GateInputError(f"the runs have a different {what[key]} than baseline "
                                 f"{baseline.get('name', '?')!r}: {current.get(key)!r} vs {baseline.get(key)!r}; "
                                 "compare like with like or save a new baseline")
