"""The report app in a real browser: `streamlit run` on 127.0.0.1, headless Chromium, charts drawn, screenshot."""
import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from fixtures_runs import make_runs, make_sweep
from harness.commands.report import app_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOT_DIR = Path(os.environ.get("REPORT_SCREENSHOT_DIR", "")) if os.environ.get("REPORT_SCREENSHOT_DIR") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in time")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group we started: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def screenshot(ws_url: str, page_url: str, min_charts: int, deadline: float) -> tuple[bytes, int]:
    """Open page_url through the DevTools protocol, wait until min_charts plotly charts are drawn, screenshot."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10_000))

            async def call(method, **params):
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive(timeout=max(1.0, deadline - time.monotonic()))).data)
                    if msg.get("id") == i:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg["result"]

            await call("Emulation.setDeviceMetricsOverride", width=1400, height=1600, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.navigate", url=page_url)
            drawn = 0
            # charts whose SVG holds at least one drawn trace (bars, lines or a heatmap)
            js = ("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                  ".filter(e => e.querySelector('.main-svg .trace')).length")
            while time.monotonic() < deadline:
                res = await call("Runtime.evaluate", expression=js, returnByValue=True)
                drawn = int(res["result"].get("value") or 0)
                if drawn >= min_charts:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)  # let the last charts finish their transition
            shot = await call("Page.captureScreenshot", format="png")
            return base64.b64decode(shot["data"]), drawn


def need_chromium() -> None:
    """Skip where chromium is missing, saying why; under CI (CI=true) its absence is a failure."""
    if CHROMIUM is None:
        why = "chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}; CI=true, so the browser test must run")
        pytest.skip(why)


@pytest.mark.e2e
def test_app_draws_charts_in_headless_chromium(tmp_path):
    need_chromium()
    start = time.monotonic()
    deadline = start + 55
    runs, sweeps = tmp_path / "runs", tmp_path / "sweeps"
    make_runs(runs)
    make_sweep(sweeps)
    port = free_port()
    cmd, env = app_command(str(runs), str(sweeps), port)
    app_log = open(tmp_path / "streamlit.log", "w")
    app = subprocess.Popen(cmd, env=env, stdout=app_log, stderr=subprocess.STDOUT, start_new_session=True)
    browser = None
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", deadline)
        profile = tmp_path / "chromium-profile"
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        dev_port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{dev_port}/json/list", timeout=5) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        png, drawn = asyncio.run(screenshot(page["webSocketDebuggerUrl"],
                                            f"http://127.0.0.1:{port}/?section=Compare", 6, deadline))
    finally:
        if browser is not None:
            stop(browser)
        stop(app)
        app_log.close()
    (tmp_path / "report.png").write_bytes(png)
    if SHOT_DIR:
        SHOT_DIR.mkdir(parents=True, exist_ok=True)
        (SHOT_DIR / "report-compare.png").write_bytes(png)
    log = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert drawn >= 6, f"only {drawn} of 6 charts drawn; streamlit log:\n{log[-2000:]}"
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert img.shape == (1600, 1400)
    assert img.std() > 10, "the screenshot is blank"
    # many distinct grey levels: text and coloured traces, not a flat page
    assert len(np.unique(img.astype(int))) > 50
    assert time.monotonic() - start < 60


@pytest.mark.e2e
def test_harness_report_serves_on_loopback_and_stops_its_app_on_sigterm(tmp_path):
    make_runs(tmp_path / "runs")
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness", "report", str(tmp_path / "runs"), "--port", str(port)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", time.monotonic() + 40)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert f"serving http://127.0.0.1:{port}" in out
        # the streamlit child is gone too: nothing answers on the port any more
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        stop(proc)
