"""A progress bar over a run: counts the records appended to records.jsonl while the load runs."""
from __future__ import annotations

import threading
from pathlib import Path


class RecordProgress:
    """tqdm bar of finished requests out of the trace's total, fed by polling the records file."""

    def __init__(self, records_path: Path, total: int, desc: str, enabled: bool = True,
                 interval_s: float = 0.5) -> None:
        self.path = Path(records_path)
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.interval_s = interval_s
        self.count = 0
        self._offset = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None

    def poll(self) -> int:
        """Read the lines appended since the last poll; returns the count so far."""
        if self.path.is_file():
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # only whole lines
            whole = chunk[:end]
            self.count += whole.count(b"\n") - whole.count(b'"status":"sent"')  # finished requests only
            self._offset += end
        return self.count

    def start(self) -> "RecordProgress":
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="req", dynamic_ncols=True, leave=True)
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._update()

    def _update(self) -> None:
        before = self.count
        self.poll()
        if self._bar is not None and self.count > before:
            self._bar.update(min(self.count, self.total) - min(before, self.total))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._update()
        if self._bar is not None:
            self._bar.close()
