"""scripts/served_vs_step.py: served tokens/s beside what the profiled step allows at the run's mean batch."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("served_vs_step", Path(__file__).parents[1] / "scripts" / "served_vs_step.py")
svs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(svs)

PROFILE = {"decode": [dict(batch=b, adapters=a, step_ms=ms) for b, a, ms in
                      [(64, 0, 6.0), (64, 30, 8.0), (128, 30, 10.0), (256, 30, 14.0), (256, 0, 12.0)]]}


def make_run(tmp_path, batches, served=5000.0, window=10.0, counters=None, old=False):
    """A run whose server.csv has the batch-size gauge at `batches` [(t, b)] and, if given, the steps and
    decode_tokens counters [(t, steps, decode_tokens)] on the same scrapes; long (t, metric, labels, value),
    or as runs before the long format and "measured_s" had it (old: wide, "window_s")."""
    run = tmp_path / "run"
    run.mkdir()
    span = {"window_s" if old else "measured_s": window}
    (run / "summary.json").write_text(json.dumps({**span, "metrics": {"output_tok_s": served}}))
    (run / "config.json").write_text(json.dumps({"workload": {"adapters": {"count": 30}}}))
    scrapes = [{"t": t, "lora_fleet_batch_size": b} for t, b in batches]
    for row, (_, n, d) in zip(scrapes, counters or []):
        row.update(lora_fleet_steps=n, lora_fleet_decode_tokens=d)
    if old:
        cols = list(scrapes[0])
        rows = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in scrapes]
    else:
        rows = ["t,metric,labels,value"]
        for r in scrapes:
            rows.append(f'{r["t"]},lora_fleet_requests_total,"status=""200""",7')  # labelled: left out
            rows += [f"{r['t']},{k},,{v}" for k, v in r.items() if k != "t"]
    (run / "server.csv").write_text("\n".join(rows) + "\n")
    return run


def test_interpolates_the_step_at_the_mean_batch_of_the_window(tmp_path):
    # samples before the window (t < 0) and after it are left out: mean batch (128 + 192) / 2 = 160
    run = make_run(tmp_path, [(-1.0, 999), (0.5, 128), (9.5, 192), (11.0, 999)])
    out = svs.compare(run, PROFILE)
    assert out["adapters"] == 30 and out["mean_batch"] == 160
    assert out["step_ms"] == pytest.approx(11.0)  # a quarter of the way from 10 ms (128) to 14 ms (256)
    assert out["allowed_tok_s"] == pytest.approx(160 / 0.011)
    assert out["ratio"] == pytest.approx(5000 / (160 / 0.011)) and out["met"] is False
    assert out["mean_batch_from"] == svs.GAUGE_MEAN


def test_uses_decode_sequences_per_step_when_the_counters_are_there(tmp_path, capsys):
    # inside the window: 10 steps (the gauge saw prefills too) carried 1,600 decode tokens: 160 a step
    run = make_run(tmp_path, [(-1.0, 999), (0.5, 300), (9.5, 300), (11.0, 999)],
                   counters=[(-1.0, 0, 0), (0.5, 100, 15_000), (9.5, 110, 16_600), (11.0, 200, 99_000)])
    out = svs.compare(run, PROFILE)
    assert out["mean_batch"] == pytest.approx(160) and out["mean_batch_from"] == svs.DECODE_PER_STEP
    assert out["step_ms"] == pytest.approx(11.0)
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 0
    assert "decode sequences per step" in capsys.readouterr().out


def test_reads_runs_made_before_the_long_server_csv(tmp_path):
    run = make_run(tmp_path, [(0.5, 128), (9.5, 192), (10.5, 999)], old=True)
    assert svs.compare(run, PROFILE)["mean_batch"] == 160


def test_outside_the_profiled_batches_is_a_usage_error(tmp_path, capsys):
    run = make_run(tmp_path, [(1.0, 20)])
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 2
    assert "outside the profiled batches" in capsys.readouterr().err


def test_prints_both_figures_side_by_side(tmp_path, capsys):
    run = make_run(tmp_path, [(1.0, 128)], served=11_000.0)
    out_json = tmp_path / "o.json"
    assert svs.main([str(run), str(_write(tmp_path, PROFILE)), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "12,800" in text and "11,000" in text and "86% (meets >= 85%)" in text
    assert json.loads(out_json.read_text())["met"] is True


def _write(tmp_path, obj):
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(obj))
    return p


def test_sets_the_run_against_the_profiled_mixed_step_when_both_are_there(tmp_path, capsys):
    """With the prompt-token counter and a profile of mixed steps, a second figure: the mixed step at the run's
    decodes and prompt tokens per step (bilinear), and what it allows; outside the profiled points, no figure."""
    profile = dict(PROFILE, mixed=[dict(batch=b, adapters=30, prompt_tokens=p, step_ms=ms) for b, p, ms in
                                   [(128, 0, 10.0), (128, 200, 14.0), (256, 0, 14.0), (256, 200, 20.0)]])
    run = make_run(tmp_path, [(0.5, 300), (9.5, 300)], counters=[(0.5, 100, 15_000), (9.5, 110, 16_600)],
                   served=8000.0)
    lines = (run / "server.csv").read_text().splitlines()
    lines += ["0.5,lora_fleet_prompt_tokens_total,,1000", "9.5,lora_fleet_prompt_tokens_total,,2000"]
    (run / "server.csv").write_text("\n".join(lines) + "\n")
    out = svs.compare(run, profile)
    m = out["mixed"]  # 160 decodes (a quarter from 128 to 256), 100 prompt tokens (half of 0..200) a step
    assert m["prompt_tokens_per_step"] == pytest.approx(100)
    assert m["step_ms"] == pytest.approx((11.0 + 15.5) / 2)  # 10->14 and 14->20 at a quarter, then halfway
    assert m["allowed_tok_s"] == pytest.approx(160 / (m["step_ms"] / 1e3)) and m["ratio"] == pytest.approx(
        8000 / m["allowed_tok_s"])
    assert svs.main([str(run), str(_write(tmp_path, profile))]) == 0
    assert "the profiled mixed step is 13.25 ms" in capsys.readouterr().out
    far = dict(profile, mixed=[r for r in profile["mixed"] if r["prompt_tokens"] == 0])  # no prompt rows profiled
    assert svs.compare(run, far)["mixed"]["step_ms"] is None
    assert svs.main([str(run), str(_write(tmp_path, far))]) == 0
    assert "outside the profile's graphed mixed points" in capsys.readouterr().out


def test_an_eager_mixed_point_is_never_interpolated_and_the_nearest_graphed_one_is_labelled(tmp_path, capsys):
    """A profiled mixed point beyond the graphs' rows ran eager (several times slower): it bends no line. Without a
    graphed square around the run's step there is no interpolated figure, only the nearest graphed point, said to
    be that (run 14: 230.7 decodes + 280.5 prompt tokens, the 256 + 288 corner eager at 56.8 ms)."""
    rows = [(224, 256, 16.0, True), (224, 288, 16.1, True), (256, 256, 15.9, True), (256, 288, 56.8, False)]
    profile = dict(PROFILE, mixed=[dict(batch=b, adapters=30, prompt_tokens=p, step_ms=ms, graphed=g)
                                   for b, p, ms, g in rows])
    run = make_run(tmp_path, [(0.5, 300), (9.5, 300)], counters=[(0.5, 100, 15_000), (9.5, 110, 17_300)],
                   served=13_000.0)  # 230 decodes a step
    lines = (run / "server.csv").read_text().splitlines()
    lines += ["0.5,lora_fleet_prompt_tokens_total,,1000", "9.5,lora_fleet_prompt_tokens_total,,3800"]  # 280 a step
    (run / "server.csv").write_text("\n".join(lines) + "\n")
    out = svs.compare(run, profile)
    assert out["mixed"]["step_ms"] is None  # not a bilinear through 56.8 ms
    near = out["mixed"]["nearest"]
    assert (near["batch"], near["prompt_tokens"], near["step_ms"]) == (224, 288, 16.1)
    assert near["ratio"] == pytest.approx(13_000 / (224 / 16.1e-3))
    assert svs.main([str(run), str(_write(tmp_path, profile))]) == 0
    printed = capsys.readouterr().out
    assert "nearest graphed point, not interpolated: 224 decodes + 288 prompt tokens, 16.10 ms" in printed
    graphed = dict(profile, mixed=[dict(r, step_ms=16.2, graphed=True) if not r["graphed"] else r
                                   for r in profile["mixed"]])
    assert svs.compare(run, graphed)["mixed"]["step_ms"] is not None  # all four graphed: interpolated as before


def test_prints_the_counters_per_step(tmp_path, capsys):
    """Decodes and prompt tokens per step and the measured time a step, from the counters inside the window."""
    run = make_run(tmp_path, [(0.5, 300), (9.5, 300)], counters=[(0.5, 100, 15_000), (9.5, 110, 16_600)])
    lines = (run / "server.csv").read_text().splitlines()
    lines += ["0.5,lora_fleet_prompt_tokens_total,,1000", "9.5,lora_fleet_prompt_tokens_total,,2000"]
    (run / "server.csv").write_text("\n".join(lines) + "\n")
    c = svs.compare(run, PROFILE)["counters"]
    assert c == dict(decode_per_step=160, prompt_tokens_per_step=100, measured_step_ms=pytest.approx(900))
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 0
    assert "per step (counters): 160.0 decodes, 100.0 prompt tokens received, 900.00 ms measured" in \
        capsys.readouterr().out


def test_prefers_the_pipelined_step_where_the_profile_timed_it(tmp_path):
    """Profiles that time steps launched back to back (the overlapped engine's way) are read by that figure."""
    run = make_run(tmp_path, [(0.5, 128), (9.5, 192)])
    piped = {"decode": [dict(r, pipelined_ms=r["step_ms"] / 2) for r in PROFILE["decode"]]}
    out = svs.compare(run, piped)
    assert out["step_ms"] == pytest.approx(5.5) and out["step_timing"].startswith("pipelined")
    assert svs.compare(run, PROFILE)["step_timing"] == "synced around each step"


def test_prints_the_share_of_steps_that_expanded_by_rows(tmp_path, capsys):
    """lora_fleet_expand_rows_steps (since run 9) over the steps counter; runs without it print nothing of it."""
    run = make_run(tmp_path, [(0.5, 300), (9.5, 300)], counters=[(0.5, 100, 15_000), (9.5, 110, 16_600)])
    assert svs.compare(run, PROFILE)["expand_rows_share"] is None
    lines = (run / "server.csv").read_text().splitlines()
    lines += ["0.5,lora_fleet_expand_rows_steps,,40", "9.5,lora_fleet_expand_rows_steps,,44"]
    (run / "server.csv").write_text("\n".join(lines) + "\n")
    assert svs.compare(run, PROFILE)["expand_rows_share"] == pytest.approx(0.4)
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 0
    assert "LoRA expand by rows in 40% of the steps" in capsys.readouterr().out


@pytest.mark.parametrize("wait, verdict", [(0.2, "the host sets the pace"), (4.0, "the device sets the pace"),
                                           (1.0, "neither clearly")])
def test_says_whether_the_host_or_the_device_set_the_pace(tmp_path, capsys, wait, verdict):
    """The engine thread's step_seconds and device_wait_seconds over the window: 8 of 9 s in steps; of those,
    `wait` s blocked on the device's tokens. Runs without the counters print nothing of it."""
    run = make_run(tmp_path, [(0.5, 300), (9.5, 300)], counters=[(0.5, 100, 15_000), (9.5, 110, 16_600)])
    assert svs.compare(run, PROFILE)["engine_thread"] is None
    lines = (run / "server.csv").read_text().splitlines()
    lines += ["0.5,lora_fleet_step_seconds,,1.0", "9.5,lora_fleet_step_seconds,,9.0",
              "0.5,lora_fleet_device_wait_seconds,,0.5", f"9.5,lora_fleet_device_wait_seconds,,{0.5 + wait}"]
    (run / "server.csv").write_text("\n".join(lines + ["0.5,lora_fleet_overlap,,1", "9.5,lora_fleet_overlap,,1"]) + "\n")
    e = svs.compare(run, PROFILE)["engine_thread"]
    assert e["in_steps"] == pytest.approx(8 / 9) and e["waiting_on_device"] == pytest.approx(wait / 8)
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 0
    assert f"in steps 89% of the window, {wait / 8:.0%} of that blocked" in (text := capsys.readouterr().out)
    assert verdict in text
    (run / "server.csv").write_text("\n".join(lines) + "\n")  # not overlapped: the host waits on every step
    assert svs.main([str(run), str(_write(tmp_path, PROFILE))]) == 0
    assert "not overlapped: the host's and the device's times add up" in capsys.readouterr().out


def test_says_the_ratio_is_a_bound_when_the_profile_had_another_context(tmp_path, capsys):
    """A decoding sequence holds its prompt and on average half its output: 128 + 200 / 2 = 228 tokens here
    (uniform 100..300 outputs). Against a profile at 512 tokens the step allowed is too slow, so the ratio is an
    upper bound; against one at 128, a lower bound; a run without length fields prints nothing of it."""
    run = make_run(tmp_path, [(1.0, 128)])
    config = json.loads((run / "config.json").read_text())
    config["workload"]["traffic"] = {"prompt_tokens": {"kind": "fixed", "value": 128},
                                     "output_tokens": {"kind": "uniform", "low": 100, "high": 300}}
    (run / "config.json").write_text(json.dumps(config))
    for ctx, bound in ((512, "upper bound"), (128, "lower bound")):
        profile = {**PROFILE, "config": {"context": ctx}}
        assert svs.compare(run, profile)["context"]["run_mean"] == pytest.approx(228, abs=2)
        assert svs.main([str(run), str(_write(tmp_path, profile))]) == 0
        assert f"had {ctx} tokens, this run's decoding sequences 228 on average" in (text := capsys.readouterr().out)
        assert f"read it as an {bound}" in text
    (tmp_path / "bare").mkdir()
    bare = make_run(tmp_path / "bare", [(1.0, 128)])
    assert svs.compare(bare, {**PROFILE, "config": {"context": 512}})["context"]["run_mean"] is None
