"""Start a server process (an engine server or the stub), wait for `READY url` and /health, stop it for sure."""
from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from engines.procs import ChildProcess


class ServerError(RuntimeError):
    """The server did not come up or died; the message carries the end of its log."""


def wait_health(url: str, timeout_s: float, health_path: str = "/health", alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise ServerError(f"server exited before {url}{health_path} answered")
        try:
            with urllib.request.urlopen(url + health_path, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ServerError(f"{url}{health_path} did not answer 200 within {timeout_s:g} s (last: {last})")


class ServerProcess:
    """A server child (engines.procs.ChildProcess: own group, dies with the harness, stopped for sure) whose
    stdout is scanned for the READY line and copied, with its stderr, to log_path."""

    def __init__(self, cmd: list[str], log_path: str | Path, ready_timeout_s: float = 300.0,
                 health_path: str = "/health", env: dict[str, str] | None = None, cwd: str | Path | None = None):
        self.cmd = cmd
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        self.health_path = health_path
        self.env = env
        self.cwd = cwd
        self.url: str | None = None
        self.child: ChildProcess | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def proc(self):
        return self.child.proc if self.child is not None else None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(("$ " + " ".join(self.cmd) + "\n").encode())
        log.flush()
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.child = ChildProcess(self.cmd, stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.cwd)
        self.child.start()
        self._reader = threading.Thread(target=self._read_stdout, args=(log,), name="server-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.1):
            if not self.child.alive():
                raise ServerError(f"server exited with code {self.proc.returncode} before it was ready:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"server printed no READY line within {self.ready_timeout_s:g} s:\n"
                                  f"{self.log_tail()}")
        wait_health(self.url, max(5.0, deadline - time.monotonic()), self.health_path, alive=self.alive)
        return self.url

    def _read_stdout(self, log) -> None:
        for raw in self.proc.stdout:
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY ") and not self._ready.is_set():
                self.url = line.split()[1].rstrip("/")
                self._ready.set()
        log.close()

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM to its group, SIGKILL after timeout_s; returns the exit code. A Ctrl-C meanwhile is raised
        only once the server is gone."""
        if self.child is None:
            return None
        code = self.child.stop(grace_s=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
