"""Plain-Python handle on the `python -m harness.loadgen` child process: start it, read START/DONE, stop it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from engines.procs import ChildProcess


class LoadgenProcess:
    """The Locust process of one run (engines.procs.ChildProcess: its own group with its workers, dies with the
    harness, stopped for sure), so a terminal's Ctrl-C reaches only the harness."""

    def __init__(self, trace: Path, url: str, out: Path, base_model: str, *, warmup_s: float, users: int,
                 workers: int, request_timeout_s: float, drain_timeout_s: float, log_path: Path,
                 api_key: str | None = None) -> None:
        self.cmd = [sys.executable, "-m", "harness.loadgen", "--trace", str(trace), "--url", url, "--out", str(out),
                    "--base-model", base_model, "--warmup-s", str(warmup_s), "--users", str(users),
                    "--workers", str(workers), "--request-timeout-s", str(request_timeout_s),
                    "--drain-timeout-s", str(drain_timeout_s)]
        if api_key:
            self.cmd += ["--api-key", api_key]
        self.log_path = log_path
        self.t0: float | None = None
        self.result: dict[str, Any] | None = None
        self.started = threading.Event()
        self.child: ChildProcess | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> "LoadgenProcess":
        log = self.log_path.open("ab")
        repo = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": repo + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
        self.child = ChildProcess(self.cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        self.child.start()
        self._reader = threading.Thread(target=self._read, args=(log,), name="loadgen-stdout", daemon=True)
        self._reader.start()
        return self

    def _read(self, log) -> None:
        for raw in self.proc.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").strip()
            if line.startswith("START "):
                self.t0 = float(line.split()[1])
                self.started.set()
            elif line.startswith("DONE "):
                self.result = json.loads(line[5:])
        log.close()

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.child.proc if self.child is not None else None

    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def wait(self, timeout_s: float | None = None) -> int | None:
        code = self.child.wait(timeout_s)
        if code is not None and self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def interrupt(self, grace_s: float = 15.0) -> int | None:
        """SIGINT: it records what is in flight and exits; SIGKILL if it does not within grace_s. Its workers
        are gone too when this returns (no record is appended after it)."""
        if self.child is None:
            return None
        code = self.child.stop(signal.SIGINT, grace_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
