"""The static report page: one file, plotly.js inlined once, every figure present with the runs' numbers."""
import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from fixtures_runs import make_runs, make_sweep
from harness.cli import main


class PageParser(HTMLParser):
    """Collects plot divs, script sizes and the runs table's cells."""

    def __init__(self):
        super().__init__()
        self.plot_divs, self.scripts, self.cells, self.h2 = [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "plotly-graph-div" in (a.get("class") or ""):
            self.plot_divs.append(a["id"])
        self._in = tag

    def handle_data(self, d):
        if self._in == "script":
            self.scripts.append(d)
        elif self._in == "td":
            self.cells.append(d)
        elif self._in == "h2":
            self.h2.append(d)

    def handle_endtag(self, tag):
        self._in = None


def figures_in(page: str) -> dict:
    """Every Plotly.newPlot(id, data, layout) call, decoded: {div id: (data, layout)}."""
    dec = json.JSONDecoder()
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, page.index("{", end))
        out[m.group(1)] = (data, layout)
    return out


def values(v):
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, dtype=float)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = make_runs(root)
    sweeps = tmp_path_factory.mktemp("sweeps")
    make_sweep(sweeps)
    out = root.parent / "report" / "index.html"
    assert main(["report", str(root), "--sweeps", str(sweeps), "--html", str(out)]) == 0
    return out.read_text(encoding="utf-8"), runs


def test_page_has_every_figure_and_plotly_once(page):
    text, runs = page
    p = PageParser()
    p.feed(text)
    figs = figures_in(text)
    # (2 workloads + all runs) x 6 compare figures + 4 runs x (5 timeline + 2 adapter) + 1 capacity
    assert len(p.plot_divs) == 3 * 6 + 4 * 7 + 1 == len(figs)
    assert "Compare: all runs" in p.h2
    assert set(p.plot_divs) == set(figs)
    big = [s for s in p.scripts if len(s) > 1_000_000]
    assert len(big) == 1, "plotly.js must be inlined exactly once"
    assert not re.search(r"<script[^>]*\ssrc=", text)  # nothing loaded from a CDN
    assert any(h.startswith("Capacity:") for h in p.h2) and any(h.startswith("Timeline:") for h in p.h2)
    for r in runs:
        assert r.name in p.cells


def test_figures_hold_the_runs_numbers(page):
    text, runs = page
    figs = figures_in(text)
    by_title = {}
    for data, layout in figs.values():
        by_title.setdefault(layout["title"]["text"], []).append(data)
    want = {r.name: json.loads((r / "summary.json").read_text())["metrics"] for r in runs}
    seen = 0
    for data in by_title["Throughput and goodput"]:
        for trace in data:
            if trace["name"] == "output tokens/s":
                for x, y in zip(trace["x"], values(trace["y"])):
                    assert y == pytest.approx(want[x]["output_tok_s"])
                    seen += 1
    assert seen == 2 * 4  # each run in its workload's compare and in all runs'
    all_runs = by_title["Throughput and goodput"][-1][0]["x"]
    started = {r.name: json.loads((r / "summary.json").read_text())["started_at"] for r in runs}
    assert list(all_runs) == sorted(started, key=started.get, reverse=True)  # newest first, as in the table
    cap = by_title["Capacity: largest total rate meeting the SLO"][0]
    lines = {t["name"]: values(t["y"]) for t in cap}
    assert lines["multilora"][0] == pytest.approx(12.0 / (1 + 1 / 30), rel=1e-4)


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--html", str(tmp_path / "x.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--html", str(tmp_path / "x.html")]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_png_export_says_what_is_missing(tmp_path, capsys):
    make_runs(tmp_path / "runs")
    try:
        import kaleido  # noqa: F401
    except ModuleNotFoundError:
        assert main(["report", str(tmp_path / "runs"), "--png", str(tmp_path / "png")]) == 2
        assert "kaleido" in capsys.readouterr().err
    else:
        assert main(["report", str(tmp_path / "runs"), "--png", str(tmp_path / "png")]) == 0
        pngs = list((tmp_path / "png").glob("*.png"))
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
