"""Run directories (layout in harness/schema.py): the writer used during a run and the reader everyone else uses."""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import RunFailed
from harness.loadgen.recorder import SENT
from harness.schema import RECORD_FIELDS, RUN_FILES, RUN_STATUSES


class RunError(ValueError):
    """A folder is not a readable run directory; the message says which file is wrong."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Atomic: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


CLIENT_DIED = "client died: the load generator ended while the request was in flight"


def read_records_jsonl(path: Path) -> pd.DataFrame:
    """Records as a table, one per request: its final line, else its "sent" line read as an error (the load
    generator died while it was in flight). A torn line (the writer was killed mid-line) is skipped."""
    rows = []
    if path.is_file():
        with path.open("rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:  # also a torn line that is not UTF-8
                    continue
    df = pd.DataFrame(rows)
    for col in RECORD_FIELDS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    if not df.empty:
        sent = df["status"] == SENT
        final = df[~sent].drop_duplicates("request_id", keep="first")
        died = df[sent & ~df["request_id"].isin(set(final["request_id"]))].drop_duplicates("request_id").copy()
        died["status"], died["error"], died["http_status"] = "error", CLIENT_DIED, 0
        df = pd.concat([final, died]).sort_values("request_id", kind="stable").reset_index(drop=True)
        for col in ("intended_send", "actual_send", "first_token", "end"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


STATUS_BYTES = 4096  # status.json is padded to this size, so it can be rewritten in place on a full disk


class RunWriter:
    """Creates runs/<YYYYmmdd-HHMMSS>-<workload>-<engine>/ and writes its files as the run goes.

    A folder that cannot be written raises RunFailed with the OS error, in one line."""

    def __init__(self, runs_root: str | Path, workload: str, engine: str) -> None:
        root = Path(runs_root)
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(workload)}-{slug(engine)}"
        path, i = root / base, 2
        try:
            root.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    path, i = root / f"{base}-{i}", i + 1
            self.path = path
            self.set_status("running", "started")
        except OSError as exc:
            raise RunFailed(f"cannot write the run directory under {str(root)!r}: {exc.strerror or exc}") from None

    def file(self, key: str) -> Path:
        return self.path / RUN_FILES[key]

    def write_json(self, key: str, obj: Any) -> None:
        write_json(self.file(key), obj)

    def set_status(self, status: str, message: str, records: int | None = None) -> None:
        """Atomic where the disk has room; on a full disk the padded file is overwritten in place (its blocks
        are already allocated), so a run that fails for lack of space still says so."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {RUN_STATUSES}")
        body = {"status": status, "message": message, "records": records or 0,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        text = json.dumps(body, indent=2)
        if len(text.encode()) > STATUS_BYTES - 1:
            body["message"] = message[:STATUS_BYTES // 2] + " ..."
            text = json.dumps(body, indent=2)
        data = text.encode().ljust(STATUS_BYTES - 1) + b"\n"  # JSON allows the trailing spaces
        path = self.file("status")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            with path.open("r+b") as f:  # no new block needed: same size, written over
                f.write(data)

    def write_trace(self, trace: pd.DataFrame) -> Path:
        from harness.trace import write_trace

        return write_trace(trace, self.file("trace"))

    def write_samples(self, key: str, df: pd.DataFrame) -> None:
        tmp = self.file(key).with_suffix(".csv.tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, self.file(key))

    def finalize_records(self, trace: pd.DataFrame, warmup_s: float, reason: str) -> pd.DataFrame:
        """Account for every request of the trace: append a not_sent record for each one without a record,
        then write records.parquet. Returns all records, one per trace row."""
        from harness.loadgen.recorder import Recorder

        have = read_records_jsonl(self.file("records_jsonl"))
        seen = set(have["request_id"].astype(int)) if not have.empty else set()
        missing = trace[~trace["request_id"].isin(seen)]
        path = self.file("records_jsonl")
        if path.is_file() and path.stat().st_size:
            with path.open("rb+") as f:  # a writer killed mid-line left no newline: end that line first
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        with Recorder(path) as rec:
            for row in missing.itertuples(index=False):
                rec.write({"request_id": int(row.request_id), "adapter": row.adapter, "intended_send": float(row.t),
                           "released": None, "actual_send": None, "first_token": None, "end": None, "token_times": [],
                           "first_chunk_tokens": 0, "prompt_tokens": int(row.prompt_tokens), "output_tokens": 0,
                           "requested_output_tokens": int(row.output_tokens), "status": "not_sent",
                           "http_status": 0, "error": f"not sent: {reason}", "in_window": float(row.t) >= warmup_s})
        records = read_records_jsonl(self.file("records_jsonl"))
        records = records[records["request_id"].isin(set(trace["request_id"]))].reset_index(drop=True)
        tmp = self.file("records").with_suffix(".parquet.tmp")
        try:
            records.to_parquet(tmp, index=False)
            os.replace(tmp, self.file("records"))
        except BaseException:
            tmp.unlink(missing_ok=True)  # no half parquet: readers fall back to records.jsonl
            raise
        return records


@dataclass
class Run:
    """Everything a run directory holds, as Python objects."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: pd.DataFrame
    gpu: pd.DataFrame
    server: pd.DataFrame
    status: dict[str, Any]
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> str:
        return str(self.summary.get("engine") or self.config.get("engine", {}).get("name", ""))

    @property
    def workload(self) -> str:
        return str(self.summary.get("workload") or self.config.get("workload", {}).get("name", ""))


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise RunError(f"{path} is missing: {path.parent} is not a run directory (run `harness run` first)")
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from None


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (records from records.parquet, or records.jsonl when the run died before it)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; give a run directory such as runs/<time>-<workload>-<engine>")
    status = _read_json(path / RUN_FILES["status"], required=True)
    parquet = path / RUN_FILES["records"]
    records = pd.read_parquet(parquet) if parquet.is_file() else read_records_jsonl(path / RUN_FILES["records_jsonl"])
    return Run(path=path, config=_read_json(path / RUN_FILES["config"], required=False),
               summary=_read_json(path / RUN_FILES["summary"], required=False), records=records,
               gpu=_read_csv(path / RUN_FILES["gpu"]), server=_read_csv(path / RUN_FILES["server"]),
               status=status, env=_read_json(path / RUN_FILES["env"], required=False))


def list_runs(root: str | Path) -> list[Path]:
    """Every run directory under root (nested ones too, e.g. sweeps), oldest first by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p.parent for p in root.rglob(RUN_FILES["status"])), key=lambda p: (p.name, str(p)))
