"""`harness profile` on the CPU with the tiny model: every section runs, the JSON holds rows and target verdicts."""
import json

from harness.cli import main


def test_profile_command_writes_json(tmp_path, capsys):
    out = tmp_path / "profile.json"
    rc = main(["profile", "--model", "tiny", "--device", "cpu", "--batches", "1,4", "--adapters", "0,1,2",
               "--prefill", "2x32", "--context", "24", "--iters", "2", "--loads", "2", "--many-adapters", "12",
               "--many-slots", "3", "--fused-lora", "auto,off", "--rounds", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(r["batch"], r["adapters"], r["fused_lora"]) for r in data["decode"]] == [
        (1, 0, None), (1, 1, "auto"), (1, 1, "off"), (4, 0, None), (4, 1, "auto"), (4, 1, "off"), (4, 2, "auto"),
        (4, 2, "off")]
    data["decode"] = [r for r in data["decode"] if r["fused_lora"] != "off"]  # the targets read the first path
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 and r["flop_floor_ms"] > 0 for r in data["decode"])
    assert data["decode"][4]["adapter_gb"] > 0 == data["decode"][2]["adapter_gb"]
    rows = {(r["batch"], r["adapters"]): r for r in data["decode"]}
    assert rows[(1, 0)]["tax_pct"] is None  # the tax compares each adapter row with its batch's base row
    assert rows[(4, 2)]["tax_pct"] == (rows[(4, 2)]["step_ms"] / rows[(4, 0)]["step_ms"] - 1) * 100
    assert [p["adapters"] for p in data["prefill"]] == [0, 8]  # prefill_adapters defaults to 8
    assert data["loads"]["count"] == 2
    assert data["env"]["lora_joint_max_tokens"] == 0  # the CPU engine's rule: no joint path
    assert data["many_adapters"]["finished"] == 12 and data["many_adapters"]["errors"] == 0
    assert data["gpu_check"]["passed"] is True and data["gpu_check"]["agree_with_graphs"]["pair"] == 1.0
    assert data["fused_vs_pair"]["argmax_agree"] == 1.0 and data["fused_vs_pair"]["rel_err"] < 1e-5
    t = data["targets"]
    assert t["many_adapters_errors"]["passed"] is True
    assert t["batch64_64_adapters_tax_pct"]["measured"] is None  # batch 64 was not measured
    assert t["batch1_one_adapter_tax_pct"]["measured"] == rows[(1, 1)]["tax_pct"]
    assert t["batch1_base_x_floor"]["measured"] == rows[(1, 0)]["x_floor"]
    printed = capsys.readouterr().out
    assert "joint LoRA path (engine extra lora_joint): off" in printed
    assert t["batch1_base_x_floor"]["pipelined"] == rows[(1, 0)]["x_floor_pipelined"] > 0  # launched back to back
    # the host's part of a step, timed inside the pipelined loop: with --iters 2 its median is the mean of two
    # intervals that lie inside the loop's own, so it cannot exceed the time per step
    assert all(0 < r["host_ms"] <= r["pipelined_ms"] for r in data["decode"])
    assert rows[(4, 2)]["tax_pct_pipelined"] == (rows[(4, 2)]["pipelined_ms"] / rows[(4, 0)]["pipelined_ms"] - 1) * 100
    assert "| target | measured (synced step) | pipelined step | bound | pass (synced / pipelined) |" in printed
    assert "(one round: spread not measured)" in printed  # --rounds 1 says it has no spread
    assert "| batch | adapters | fused_lora auto: step ms (tax) | fused_lora off: step ms (tax) |" in printed
    assert f"| 4 | 2 | {rows[(4, 2)]['step_ms']:.3f} ({rows[(4, 2)]['tax_pct']:+.1f}%) |" in printed


def test_profile_rejects_bad_lists(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["profile", "--batches", "1,x"])
    assert "comma-separated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profile", "--fused-lora", "auto,sometimes"])
    assert "'sometimes': give on, off, auto" in capsys.readouterr().err


def _decode_only(tmp_path, *extra: str) -> dict:
    """The JSON of a tiny CPU profile of batch 2 over 0 and 2 adapters, decode (and mixed) sweeps only."""
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", "tiny", "--device", "cpu", "--batches", "2", "--adapters", "0,2",
                 "--prefill", "", "--context", "24", "--loads", "0", "--many-adapters", "0", "--no-check",
                 *extra, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_profile_times_mixed_steps_and_the_fold_path(tmp_path, capsys):
    """--mixed-prompts times each decode batch with prompt tokens carried beside it (floors too); --fused-lora
    fold measures the folded LoRA output beside the pair."""
    data = _decode_only(tmp_path, "--iters", "2", "--fused-lora", "off,fold,rows", "--mixed-prompts", "40,150")
    assert [(r["adapters"], r["fused_lora"]) for r in data["decode"]] == [(0, None), (2, "off"), (2, "fold"), (2, "rows")]
    mixed = {(r["adapters"], r["prompt_tokens"]): r for r in data["mixed"]}
    assert sorted(mixed) == [(0, 40), (0, 150), (2, 40), (2, 150)]
    assert all(r["step_ms"] > 0 and r["rows"] == 2 + r["prompt_tokens"] for r in mixed.values())
    assert all(r["host_ms"] > 0 for r in mixed.values())  # the host's part of a mixed step
    assert mixed[(0, 150)]["floor_ms"] > mixed[(0, 40)]["floor_ms"] > 0  # more prompt KV written
    assert mixed[(0, 150)]["flop_floor_ms"] > mixed[(0, 40)]["flop_floor_ms"]
    assert "mixed step: decode    2 + prompt  150 tokens, adapters    2" in capsys.readouterr().out


def test_profile_rounds_pair_each_tax_with_its_round_and_print_the_range(tmp_path, capsys):
    """--rounds N visits every decode point N times in turn: each row holds medians over the rounds and the range
    of its LoRA tax, each round's tax taken against the base of the same round; srows is a path of its own."""
    data = _decode_only(tmp_path, "--iters", "1", "--fused-lora", "auto,srows", "--rounds", "3")
    assert [(r["adapters"], r["fused_lora"], r["rounds"]) for r in data["decode"]] == [
        (0, None, 3), (2, "auto", 3), (2, "srows", 3)]
    for r in data["decode"]:
        lo, hi = r["step_ms_range"]
        assert lo <= r["step_ms"] <= hi and r["pipelined_ms_range"][0] <= r["pipelined_ms"] <= r["pipelined_ms_range"][1]
    for r in data["decode"][1:]:
        lo, hi = r["tax_pct_range"]
        assert lo <= r["tax_pct"] <= hi and r["tax_pct_pipelined_range"][0] <= r["tax_pct_pipelined"]
        assert r["tax_pct_pipelined"] <= r["tax_pct_pipelined_range"][1]
    assert data["decode"][0]["tax_pct_range"] is None
    printed = capsys.readouterr().out
    assert "decode sweep: round 3 of 3 timed" in printed
    assert main(["profile", "--rounds", "0"]) == 2
    assert "--rounds 0: must be >= 1" in capsys.readouterr().err


def test_profile_pdl_and_cublaslt_flags_take_on_off_auto_or_a_token_count():
    import argparse

    import pytest

    from harness.commands.profile import _switch
    assert [_switch(v) for v in ("on", "OFF", "auto", "32")] == [True, False, "auto", 32]
    for bad in ("0", "maybe", "-4"):
        with pytest.raises(argparse.ArgumentTypeError, match="on, off, auto or a token count"):
            _switch(bad)
