"""The one child-process helper: own process group, dies with its parent, SIGTERM then SIGKILL, an unskippable stop."""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
try:  # looked up before any fork: a child must not dlopen (another thread may hold the loader's lock)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the atexit stop still covers a normal exit
    _PRCTL = None
_LIVE: set["ChildProcess"] = set()
_LIVE_LOCK = threading.Lock()


def _death_signal(sig: int):
    """A preexec_fn: the kernel sends `sig` to the child when the thread that started it exits (Linux), so a
    harness killed with SIGKILL leaves no server or load generator behind."""
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of a process group, from /proc; [] where /proc is absent."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


class ChildProcess:
    """A subprocess in its own session and process group (a terminal's Ctrl-C reaches only the harness, which
    stops it in order), killed by the kernel if the harness dies, and stopped for sure: stop() signals the whole
    group, waits `grace_s`, then SIGKILLs what is left and waits until no process of the group remains.
    stop() is idempotent and finishes even when Ctrl-C arrives meanwhile (the KeyboardInterrupt is raised
    after it); every child still running at interpreter exit is stopped too.

    The death signal fires when the *thread* that called start() exits: start children from a thread that
    lives as long as they should."""

    def __init__(self, cmd: list[str], *, stdout: Any = None, stderr: Any = None, stdin: Any = subprocess.DEVNULL,
                 env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 death_signal: int = signal.SIGTERM, own_group: bool = True) -> None:
        self.cmd = [str(c) for c in cmd]
        self._popen_kw = dict(stdout=stdout, stderr=stderr, stdin=stdin, env=env, cwd=cwd)
        self.death_signal = death_signal
        self.own_group = own_group  # False: stays in the parent's group (whoever stops the parent's group stops it)
        self.proc: subprocess.Popen | None = None
        self._kill_at: float | None = None  # set by the first stop(): the SIGKILL deadline survives a retry

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> subprocess.Popen:
        self.proc = subprocess.Popen(self.cmd, start_new_session=self.own_group,
                                     preexec_fn=_death_signal(self.death_signal), **self._popen_kw)
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        """Send sig to the child and, in its own group, to what it started."""
        if self.proc is None:
            return
        try:
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            elif self.proc.poll() is None:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, or None if it still runs after timeout_s."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> int | None:
        """sig to the group, SIGKILL after grace_s, then wait until the group is empty; the exit code."""
        if self.proc is None:
            return None
        interrupted = False
        while True:
            try:
                self._stop(sig, grace_s)
                break
            except KeyboardInterrupt:  # a second Ctrl-C: finish stopping first, then let it through
                interrupted = True
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if interrupted:
            raise KeyboardInterrupt
        return self.proc.returncode

    def _stop(self, sig: int, grace_s: float) -> None:
        if self._kill_at is None:
            self._kill_at = time.monotonic() + grace_s
            if self.proc.poll() is None:
                self.send(sig)
        if self.wait(max(0.0, self._kill_at - time.monotonic())) is None:
            self.send(signal.SIGKILL)
            self.proc.wait()
        # the leader is gone; what it started in its group (load-generator workers, vLLM workers) goes too
        deadline = time.monotonic() + 10.0
        while self.own_group and group_members(self.proc.pid) and time.monotonic() < deadline:
            self.send(signal.SIGKILL)
            time.sleep(0.01)

    def __enter__(self) -> "ChildProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for child in live:
        try:
            child.stop(grace_s=5.0)
        except KeyboardInterrupt:
            pass
