"""scripts/host_step_bench.py: the host's part of a step per point, and what it built is the step's rows."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("host_step_bench",
                                              Path(__file__).parents[1] / "scripts" / "host_step_bench.py")
hsb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hsb)


def test_points_parse():
    assert hsb.parse_points("1,256+256") == [(1, 0), (256, 256)]
    with pytest.raises(SystemExit, match="BATCH"):
        hsb.parse_points("x")


def test_writes_a_row_per_point_with_the_step_s_rows(tmp_path, capsys):
    out = tmp_path / "host.json"
    assert hsb.main(["--points", "2,3+20", "--context", "32", "--iters", "2", "--adapters", "4",
                     "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["decodes"], r["prompt_tokens"], r["rows"]) for r in data["rows"]] == [(2, 0, 2), (3, 20, 23)]
    for r in data["rows"]:
        assert r["host_rows_us"] > 0 and r["meta_prepare_us"] > 0
        assert r["total_us"] == pytest.approx(r["host_rows_us"] + r["meta_prepare_us"])
    assert "meta.prepare" in capsys.readouterr().out
