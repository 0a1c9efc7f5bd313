"""`harness report`: the Streamlit report app on run directories, or a static HTML page / PNGs of its figures."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.errors import UsageError

APP = Path(__file__).resolve().parents[2] / "reports" / "app.py"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="open the report app (or write a static HTML page) for run directories",
        description="Opens the Streamlit app on 127.0.0.1: runs (filters, select to compare), compare, timeline, "
                    "adapters, capacity + planner. With --html, writes the same figures into one static page "
                    "(plotly.js inlined once) instead; with --png, writes each figure as a PNG (needs kaleido).",
        epilog="Example: harness report runs/ --sweeps sweeps/ --port 8501   |   harness report runs/ --html report.html")
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of run directories (default: runs)")
    parser.add_argument("--sweeps", default="sweeps", help="folder of sweep folders (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8501, help="port of the app on 127.0.0.1 (default: %(default)s)")
    parser.add_argument("--html", default=None, metavar="OUT.html", help="write a static page instead of serving")
    parser.add_argument("--png", default=None, metavar="DIR", help="write every figure as PNG into DIR (kaleido)")
    parser.set_defaults(func=run)


def app_command(runs_dir: str, sweeps_dir: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `streamlit run` command line and environment that serve the app on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    env = {**os.environ, "LORA_FLEET_RUNS_DIR": str(Path(runs_dir).resolve()),
           "LORA_FLEET_SWEEPS_DIR": str(Path(sweeps_dir).resolve()),
           "PYTHONPATH": os.pathsep.join([str(APP.parents[1]), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return cmd, env


def run(args: argparse.Namespace) -> int:
    from harness.report_proc import run_reports

    if not Path(args.runs_dir).is_dir():
        raise UsageError(f"RUNS_DIR {args.runs_dir}: the folder does not exist; run `harness run WORKLOAD` first")
    sweeps = ["--sweeps", args.sweeps] if Path(args.sweeps).is_dir() else []
    if args.html or args.png:  # the reports package runs in its own process: the harness never imports it
        if args.html:
            print(run_reports(["html", args.runs_dir, args.html, *sweeps]), end="")
        if args.png:
            print(run_reports(["png", args.runs_dir, args.png, *sweeps]), end="")
        return 0
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} must be in 1..65535")
    cmd, env = app_command(args.runs_dir, args.sweeps, args.port)
    print(f"report: serving http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    proc = subprocess.Popen(cmd, env=env)

    def _stop(signum, frame):  # SIGTERM stops the app too, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
