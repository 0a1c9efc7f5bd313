"""Start a server process (an engine server or the stub), wait for `READY url` and /health, stop it for sure."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


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


def signal_group_then_kill(proc: subprocess.Popen, sig: int, grace_s: float) -> None:
    """Send sig to proc's process group; SIGKILL the group if it has not exited within grace_s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class ServerProcess:
    """A child process in its own session (Ctrl-C reaches only the harness, which stops it in order)."""

    def __init__(self, cmd: list[str], log_path: str | Path, ready_timeout_s: float = 300.0,
                 health_path: str = "/health", env: dict[str, str] | None = None, cwd: str | Path | None = None):
        self.cmd = cmd
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        self.health_path = health_path
        self.env = env
        self.cwd = cwd
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(("$ " + " ".join(self.cmd) + "\n").encode())
        log.flush()
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=log, env=env, cwd=self.cwd,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read_stdout, args=(log,), name="server-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
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
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; returns the exit code."""
        if self.proc is None:
            return None
        signal_group_then_kill(self.proc, signal.SIGTERM, timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
