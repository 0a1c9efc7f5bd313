"""`harness profile` on the CPU with the tiny model: every section runs, the JSON holds rows and target verdicts."""
import json

from harness.cli import main


def test_profile_command_writes_json(tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = main(["profile", "--model", "tiny", "--device", "cpu", "--batches", "1,4", "--adapters", "0,2",
               "--prefill", "2x32", "--context", "24", "--iters", "2", "--loads", "2", "--many-adapters", "12",
               "--many-slots", "3", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(r["batch"], r["adapters"]) for r in data["decode"]] == [(1, 0), (4, 0), (4, 2)]
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 for r in data["decode"])
    assert data["decode"][2]["adapter_gb"] > 0 == data["decode"][1]["adapter_gb"]
    assert [p["adapters"] for p in data["prefill"]] == [0, 8]  # prefill_adapters defaults to 8
    assert data["loads"]["count"] == 2
    assert data["many_adapters"]["finished"] == 12 and data["many_adapters"]["errors"] == 0
    assert data["gpu_check"]["passed"] is True
    t = data["targets"]
    assert t["many_adapters_errors"]["passed"] is True
    assert t["batch64_64_adapters_x_floor"]["measured"] is None  # batch 64 was not measured
    assert "| target | measured | bound | pass |" in capsys.readouterr().out


def test_profile_rejects_bad_lists(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["profile", "--batches", "1,x"])
    assert "comma-separated" in capsys.readouterr().err
