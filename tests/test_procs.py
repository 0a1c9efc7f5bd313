"""engines.procs.ChildProcess: the group goes with the child, a Ctrl-C cannot skip a stop, children die with us."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from engines.procs import ChildProcess, group_members

pytestmark = pytest.mark.e2e
# a child that ignores SIGTERM and starts a grandchild in its group, then reports both pids
STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            "print(g.pid, flush=True); time.sleep(600)")


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False


def test_stop_kills_the_whole_group_after_the_grace_and_is_idempotent():
    child = ChildProcess([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    child.start()
    grandchild = int(child.proc.stdout.readline())
    assert set(group_members(child.pid)) == {child.pid, grandchild}
    assert child.stop(grace_s=0.5) == -signal.SIGKILL
    assert _gone(grandchild) and not group_members(child.pid)
    assert child.stop() == -signal.SIGKILL  # a second stop is a no-op with the same answer


def test_a_ctrl_c_during_stop_is_raised_only_once_the_child_is_gone():
    child = ChildProcess([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE)
    child.start()
    grandchild = int(child.proc.stdout.readline())

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # lands while stop() waits out the 3 s grace
        with pytest.raises(KeyboardInterrupt):
            child.stop(grace_s=3.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not child.alive() and _gone(grandchild) and not group_members(child.pid)


def test_children_die_with_their_parent():
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from engines.procs import ChildProcess; "
        "c = ChildProcess([sys.executable, '-c', 'import time; time.sleep(600)']); c.start(); "
        "print(c.pid, flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert psutil.pid_exists(pid)
    parent.kill()  # SIGKILL: no atexit, no finally; the kernel's death signal stops the child
    parent.wait()
    assert _gone(pid)
