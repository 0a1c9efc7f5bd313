"""The server benchmark runs end to end (tiny bounds), prints its table and writes JSON with real counts."""
from __future__ import annotations

import json

from engines.server.bench import main


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "server.json"
    assert main(["--concurrency", "1,4", "--max-tokens", "8", "--seconds", "0.5", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| concurrency |" in table and "tokens_per_s" in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["requests"] >= 1 and row["tokens"] == 8 * row["requests"]  # every streamed token counted
        assert row["tokens_per_s"] > 0
