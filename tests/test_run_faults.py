"""Faults around a run, end to end: two Ctrl-C, a killed load generator with workers, a full disk, an unwritable
runs folder. After each: no process of the run is left (by pid) and every trace request is accounted for once."""
from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import psutil
import pytest

from engines.procs import group_members
from harness.spec import load_workload
from harness.store import CLIENT_DIED, load_run, read_records_jsonl
from harness.trace import build_trace
from tests.test_run_e2e import REPO, workload

pytestmark = pytest.mark.e2e
SLOW_STUB = {"name": "stub", "kind": "stub", "options": {"ttft_ms": 5, "token_delay_ms": 150}}


def start(tmp_path, engine=None, preexec=None, **over):
    """`harness run` on the stub in a child process; returns (proc, workload path) once records are being written."""
    over = {"duration_s": 30.0, "traffic": {"rate": 10.0}, "engines": [engine or SLOW_STUB], **over}
    path = workload(tmp_path, **over)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--runs-dir", str(tmp_path / "runs"),
                             "--no-progress", "--machine", "cpu"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
    return proc, path


def wait_records(tmp_path, proc, n: int = 5):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = list((tmp_path / "runs").glob("*/records.jsonl"))
        text = files[0].read_text() if files else ""
        if text.count("\n") - text.count('"status":"sent"') >= n:  # finished requests (not just sent)
            return files[0].parent
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no records appeared: {proc.communicate()[0]}")


def family(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def gone(procs: list[psutil.Process]) -> bool:
    """Every process is gone (zombies count as gone: they run nothing)."""
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def accounted_once(run_dir, path) -> object:
    """Every trace request has exactly one record in records.parquet; returns the run."""
    run = load_run(run_dir)
    total = len(build_trace(load_workload(path)))
    assert sorted(run.records["request_id"]) == list(range(total))
    assert run.summary["counts"]["total"] == total
    return run


def test_two_ctrl_c_close_together_leave_nothing_running(tmp_path):
    proc, path = start(tmp_path)
    try:
        run_dir = wait_records(tmp_path, proc)
        children = family(proc.pid)
        assert len(children) >= 2  # the server and the load generator
        loadgen = next(p for p in children if "harness.loadgen" in " ".join(p.cmdline())
                       and "stub_server" not in " ".join(p.cmdline()))
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while loadgen.is_running() and loadgen.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)  # the harness is stopping: the second Ctrl-C lands in its stop step
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert gone(children), [(p.pid, p.cmdline()) for p in children if not gone([p])]
    run = accounted_once(run_dir, path)
    assert run.status["status"] == "interrupted"


def test_a_killed_load_generator_takes_its_workers_and_in_flight_requests_are_client_died(tmp_path):
    proc, path = start(tmp_path, loadgen={"users": 16, "workers": 2, "drain_timeout_s": 20})
    try:
        run_dir = wait_records(tmp_path, proc, n=20)
        master = next(p for p in family(proc.pid) if "harness.loadgen" in " ".join(p.cmdline())
                      and "--worker" not in p.cmdline() and "stub_server" not in " ".join(p.cmdline()))
        workers = master.children()
        assert len(workers) == 2
        master.kill()
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert gone(workers) and not group_members(master.pid)
    lines = (run_dir / "records.jsonl").read_text().count("\n")
    run = accounted_once(run_dir, path)
    assert run.status["status"] == "error" and "load generator died" in run.status["message"]
    died = run.records[run.records["error"] == CLIENT_DIED]
    assert len(died) >= 1 and (died["status"] == "error").all()  # in flight at the kill: not "not sent"
    assert (run.records["status"] != "sent").all()
    assert (run_dir / "records.jsonl").read_text().count("\n") == lines  # nothing appended after the end


def _file_size_limit(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_ends_the_run_as_error_with_the_os_error(tmp_path):
    # every file of the run may hold at most 48 KiB: records.jsonl hits it mid-run, as a full disk would
    proc, path = start(tmp_path, engine={"name": "stub", "kind": "stub", "options": {"ttft_ms": 2}},
                       preexec=_file_size_limit(48 << 10), duration_s=20.0, traffic={"rate": 20.0})
    try:
        wait_records(tmp_path, proc, n=2)
        children = family(proc.pid)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert gone(children)
    assert "Traceback" not in out
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # beside it: the invocation's results
    run = load_run(run_dir)  # a readable partial run directory
    assert run.status["status"] == "error" and "File too large" in run.status["message"], run.status
    assert "records.jsonl" in run.status["message"]
    records = read_records_jsonl(run_dir / "records.jsonl")
    assert len(records) > 0 and records["request_id"].is_unique


def test_an_unwritable_runs_folder_is_one_line_and_exit_1(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the runs folder should be")
    path = workload(tmp_path, engines=[SLOW_STUB])
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--runs-dir", str(blocker / "x"),
                           "--no-progress", "--machine", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cannot write the run directory" in proc.stderr and "Not a directory" in proc.stderr

