"""A static HTML page with the report's figures (plotly.js inlined once), for CI artifacts."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from harness.plan_text import plan_sweep
from reports import data, figures, labels, views

_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} th{{background:#f4f4f4}}
.wide{{overflow-x:auto}} pre{{background:#f8f8f8;padding:1em;white-space:pre-wrap;font-size:13px}}</style>
</head><body><h1>{title}</h1>
"""


def _figure_html(fig: go.Figure, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=bool(first), default_width="100%", default_height="450px")


def _table(df) -> str:
    """A table with human column names and units, scrolling sideways rather than cut off."""
    return '<div class="wide">' + labels.humanize(df).to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                                            na_rep="") + "</div>"


def planner_block(folder: str, payload: dict) -> str:
    """The planner's answer for the workload a sweep measured, as `harness plan` prints it."""
    try:
        _, text = plan_sweep(folder, payload)
    except ValueError as exc:
        return f"<p>No plan from this sweep: {html.escape(str(exc))}</p>"
    return ("<h3>Planner: the measured workload</h3><pre>" + html.escape(text) + "</pre>"
            "<p>Other fleets: <code>harness plan --sweep " + html.escape(folder)
            + " --adapters N --rate-per-adapter R</code>, or the report app's Capacity section.</p>")


def collect(runs_root: str | Path, *, sweeps_root: str | Path | None = None,
            max_compare: int = 8) -> tuple["data.pd.DataFrame", list[tuple[str, list]]]:
    """The runs table and every section's figures (and HTML blocks): compare per workload (and across the newest
    max_compare runs when the folder holds several workloads), timeline and adapters per run, capacity and the
    planner's answer per sweep."""
    paths = data.find_runs(runs_root)
    sweeps = data.find_sweeps(runs_root, *([sweeps_root] if sweeps_root else []))
    if not paths and not sweeps:
        raise FileNotFoundError(f"no run directories or capacity.json under {runs_root}; "
                                "run `harness run WORKLOAD` or `harness sweep WORKLOAD` first")
    runs = [data.load(p) for p in paths]
    table = data.runs_table(runs)
    sections: list[tuple[str, list[go.Figure]]] = []
    by_label = {data.label(r): r for r in runs}
    for workload, group in table.groupby("workload", sort=False):
        chosen = [by_label[name] for name in group["run"].head(max_compare)]
        sections.append((f"Compare: {workload}", views.compare(chosen)))
    if table["workload"].nunique() > 1:  # e.g. one workload over 1, 30, ..., 5000 adapters, each run named apart
        sections.append(("Compare: all runs", views.compare([by_label[n] for n in table["run"].head(max_compare)])))
    for r in runs:
        sections.append((f"Timeline: {data.label(r)}", views.timeline(r)))
        sections.append((f"Adapters: {data.label(r)}", views.adapters(r)))
    for folder, payload in sweeps.items():
        points = data.capacity_points(payload)[["engine", "n", "capacity", "bound", "goodput_tok_s", "runs_tried",
                                                 "limited_runs"]]
        sections.append((f"Capacity: {folder}", [*views.capacity(payload), _table(points),
                                                 planner_block(folder, payload)]))
    return table, sections


def build_page(runs_root: str | Path, *, title: str = "LoRA fleet report", sweeps_root: str | Path | None = None,
               max_compare: int = 8) -> str:
    """The whole page: the runs table, then every section of collect() with plotly.js inlined once."""
    table, sections = collect(runs_root, sweeps_root=sweeps_root, max_compare=max_compare)
    parts = [_HEAD.format(title=html.escape(title)), "<h2>Runs</h2>", _table(table.drop(columns=["path"])),
             "<p>Latencies in ms; failed = errors + timeouts + requests never sent, as <code>harness run</code> "
             "counts them.</p>"]
    first = True
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, str):
                parts.append(item)
                continue
            parts.append(_figure_html(item, first))
            first = False
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(runs_root: str | Path, out: str | Path, **kwargs) -> Path:
    """Write build_page(...) to out (parents created) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_page(runs_root, **kwargs), encoding="utf-8")
    return out


def write_pngs(runs_root: str | Path, out_dir: str | Path, *, sweeps_root: str | Path | None = None) -> list[Path]:
    """Every figure of the page as a PNG in out_dir (needs kaleido: says so before building any figure if it is
    missing)."""
    figures.require_png_export()
    _, sections = collect(runs_root, sweeps_root=sweeps_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (heading, figs) in enumerate(sections):
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in heading)[:80]
        for j, fig in enumerate(f for f in figs if isinstance(f, go.Figure)):
            written.append(figures.save_png(fig, out_dir / f"{i:02d}-{stem}-{j}.png"))
    return written
