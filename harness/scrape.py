"""Scraper of a server's Prometheus /metrics beside the load: one row per scrape, one column per series."""
from __future__ import annotations

import math
import threading
import time
import urllib.request
from typing import Any

import pandas as pd


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels} value [timestamp]` lines -> {"name{labels}": value}; comments and junk lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "}" in line:
            key, _, rest = line.rpartition("}")
            key += "}"
        else:
            key, _, rest = line.partition(" ")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = float(parts[0])
        except ValueError:
            continue
        out[key.replace(" ", "")] = value if math.isfinite(value) else float("nan")
    return out


class MetricsScraper:
    """GETs url every interval_s in a thread until stop(); t is time.monotonic()."""

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rows: list[dict[str, Any]] = []
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)

    def start(self) -> "MetricsScraper":
        self._thread.start()
        return self

    def scrape_once(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                text = resp.read().decode(errors="replace")
        except OSError as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        return parse_prometheus(text)

    def _loop(self) -> None:
        while not self._stop.is_set():
            values = self.scrape_once()
            if values is not None:
                self.rows.append({"t": time.monotonic(), **values})
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 1)

    def frame(self, t0: float = 0.0) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        if df.empty:
            return pd.DataFrame({"t": pd.Series(dtype=float)})
        df["t"] = df["t"] - t0
        return df
