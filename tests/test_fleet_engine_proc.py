"""engines/fleet/engine_proc.py: the replica finds its engine process's READY line however the output arrives, and
says why when the process dies first."""
from __future__ import annotations

import subprocess
import sys
from collections import deque

import pytest

from engines.fleet.engine_proc import EngineChild
from engines.procs import ChildProcess


def child(script: str) -> EngineChild:
    """An EngineChild over a stand-in process (a Python one-liner) instead of an engine; its stdin is a pipe left
    open, so a script that reads it stays alive, as an engine serving, until stop()."""
    c = EngineChild.__new__(EngineChild)
    c.proc = ChildProcess([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.PIPE)
    c.last_lines = deque(maxlen=8)
    c.proc.start()
    return c


def test_a_ready_line_that_arrives_with_the_line_before_it_is_found():
    # one write: a buffered readline took both lines at once and then waited for the descriptor to the timeout
    c = child("import sys; sys.stdout.write('serve: engine tiny\\nREADY http://127.0.0.1:9\\nafter\\n'); "
              "sys.stdout.flush(); sys.stdin.read()")
    try:
        assert c._wait_ready(60.0) == "http://127.0.0.1:9"
        assert [x.strip() for x in c.last_lines] == ["serve: engine tiny"]
    finally:
        c.stop()


def test_a_ready_line_split_across_writes_is_found():
    c = child("import sys; w = sys.stdout.write; f = sys.stdout.flush; w('loading\\nREA'); f(); "
              "w('DY http://127.0.0.1:8\\n'); f(); sys.stdin.read()")
    try:
        assert c._wait_ready(60.0) == "http://127.0.0.1:8"
    finally:
        c.stop()


def test_a_process_that_exits_first_is_reported_with_its_last_words():
    c = child("import sys; print('loading'); print('boom: bad config', end=''); sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"exited \(code 3\) before it was ready: boom: bad config"):
        c._wait_ready(60.0)
