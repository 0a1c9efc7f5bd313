"""Synthetic adapters (make_adapters) and the `harness adapters make|check` command."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from engines.adapters.peft_format import read_adapter
from engines.adapters.synth import adapter_nbytes, is_current, make_adapters, plan_adapters
from engines.model.checkpoint import save_checkpoint
from engines.model.config import ModelArgs
from engines.model.weights import random_state_dict
from harness.cli import main

BASE = ModelArgs.from_name("tiny")
QV = ("q_proj", "v_proj")


def test_folders_ranks_round_robin_and_readable(tmp_path):
    paths = make_adapters(BASE, 5, [8, 16], QV, tmp_path)
    assert [p.name for p in paths] == [f"adapter-{i:04d}" for i in range(5)]
    adapters = [read_adapter(p, BASE) for p in paths]
    assert [a.rank for a in adapters] == [8, 16, 8, 16, 8]
    assert all(a.targets == QV and a.alpha == 2 * a.rank for a in adapters)
    for a in adapters:
        for x, b in a.weights.values():
            assert x.dtype == b.dtype == torch.float16 and b.abs().max() > 0  # B is not zero
        assert a.nbytes() == adapter_nbytes(BASE, a.rank, QV, torch.float16)
    # distinct adapters, not copies of one
    assert not torch.equal(adapters[0].weights[(0, "q_proj")][1], adapters[2].weights[(0, "q_proj")][1])


def test_deterministic_per_seed_and_index(tmp_path):
    first = make_adapters(BASE, 2, [4], QV, tmp_path / "a", seed=5)
    again = make_adapters(BASE, 4, [4], QV, tmp_path / "b", seed=5)  # a larger count keeps adapter i the same
    other = make_adapters(BASE, 2, [4], QV, tmp_path / "c", seed=6)
    for i in range(2):
        x, y, z = (load_file(p[i] / "adapter_model.safetensors") for p in (first, again, other))
        assert all(torch.equal(x[k], y[k]) for k in x)
        assert not all(torch.equal(x[k], z[k]) for k in x)


def test_existing_adapters_are_reused_and_changed_ones_rewritten(tmp_path):
    paths = make_adapters(BASE, 3, [8], QV, tmp_path)
    stamps = [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in paths]
    inodes = [(p / "adapter_model.safetensors").stat().st_ino for p in paths]
    make_adapters(BASE, 3, [8], QV, tmp_path)
    assert [(p / "adapter_model.safetensors").stat().st_mtime_ns for p in paths] == stamps
    assert [(p / "adapter_model.safetensors").stat().st_ino for p in paths] == inodes
    make_adapters(BASE, 3, [8], QV, tmp_path, dtype=torch.bfloat16)  # a different request rewrites them
    assert read_adapter(paths[0], BASE).weights[(0, "q_proj")][0].dtype == torch.bfloat16
    (paths[1] / "adapter_model.safetensors").write_bytes(b"truncated")  # a broken one is rewritten too
    make_adapters(BASE, 3, [8], QV, tmp_path, dtype=torch.bfloat16)
    assert read_adapter(paths[1], BASE).rank == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "adapter-0001"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        make_adapters(BASE, 3, [8], QV, tmp_path)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter-0001"]  # refused before writing any


def test_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    with pytest.raises(ValueError, match=r"need .* GB but only .* GB is free"):
        make_adapters(BASE, 2, [8], QV, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, word", [
    (dict(count=-1), "count"),
    (dict(ranks=[]), "ranks"),
    (dict(ranks=[8, 0]), "ranks"),
    (dict(targets=["q_proj", "embed_tokens"]), "embed_tokens"),
    (dict(targets=["q_proj", "q_proj"]), "distinct"),
    (dict(dtype=torch.int8), "dtype"),
    (dict(alpha=-1.0), "alpha"),
    (dict(prefix="../x"), "prefix"),
])
def test_bad_requests_name_the_argument(tmp_path, kwargs, word):
    args = dict(base=BASE, count=2, ranks=[8], targets=QV, out_dir=tmp_path) | kwargs
    with pytest.raises(ValueError, match=word):
        make_adapters(**args)


def test_llama3_8b_shape_size_matches_the_anchor(tmp_path):
    base = ModelArgs.from_name("llama3-8b")
    assert adapter_nbytes(base, 8, ("q_proj", "k_proj", "v_proj", "o_proj"), torch.float16) == 13_631_488
    (path,) = make_adapters(base, 1, [8], QV, tmp_path)
    assert read_adapter(path, base).nbytes() == adapter_nbytes(base, 8, QV, torch.float16) == 6_815_744


def test_cli_make_then_check(tmp_path, capsys):
    out = tmp_path / "ads"
    assert main(["adapters", "make", "--base", "tiny", "--count", "3", "--ranks", "4,8",
                 "--targets", "q_proj,v_proj", str(out), "--seed", "2", "--dtype", "float32"]) == 0
    text = capsys.readouterr().out
    assert "3 adapters for tiny" in text and f"{adapter_nbytes(BASE, 8, QV, torch.float32):,}" in text
    assert sorted(p.name for p in out.iterdir()) == ["adapter-0000", "adapter-0001", "adapter-0002"]
    assert json.loads((out / "adapter-0001" / "adapter_config.json").read_text())["r"] == 8
    summary = tmp_path / "summary.json"
    assert main(["adapters", "make", "--base", "tiny", "--count", "4", "--ranks", "4,8", "--targets", "q_proj,v_proj",
                 str(out), "--seed", "2", "--dtype", "float32", "--summary-json", str(summary)]) == 0
    assert "1 written, 3 reused" in capsys.readouterr().out
    data = json.loads(summary.read_text())
    assert (data["count"], data["written"], data["reused"]) == (4, 1, 3)
    assert data["ranks"] == [{"rank": 4, "count": 2, "bytes_each": adapter_nbytes(BASE, 4, QV, torch.float32)},
                             {"rank": 8, "count": 2, "bytes_each": adapter_nbytes(BASE, 8, QV, torch.float32)}]
    assert data["total_bytes"] == sum(r["count"] * r["bytes_each"] for r in data["ranks"])

    assert main(["adapters", "check", str(out), "--base", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "4 of 4 adapters valid" in text and "adapter-0003" in text
    assert main(["adapters", "check", str(out), "--base", "tiny", "--max-rank", "4"]) == 1
    text = capsys.readouterr().out
    assert "2 of 4 adapters valid" in text and "above max_rank=4" in text


def test_cli_base_from_a_checkpoint_folder_and_bad_input(tmp_path, capsys):
    ckpt = save_checkpoint(BASE, random_state_dict(BASE), tmp_path / "ckpt")
    out = tmp_path / "ads"
    assert main(["adapters", "make", "--base", str(ckpt), "--count", "1", str(out)]) == 0
    assert main(["adapters", "check", str(out / "adapter-0000"), "--base", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["adapters", "make", "--base", "no-such-model", "--count", "1", str(out)]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["adapters", "check", str(tmp_path / "missing"), "--base", "tiny"]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["adapters", "make", "--base", "tiny", "--count", "1", "--ranks", "8,x", str(out)])
    assert "comma-separated list of integers" in capsys.readouterr().err


@pytest.mark.e2e  # starts worker processes that each import torch
def test_concurrent_makers_share_one_cache_folder(tmp_path):
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=make_adapters, args=(BASE, 6, [4, 8], QV, tmp_path), kwargs={"seed": 9})
             for _ in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"adapter-{i:04d}" for i in range(6)]
    assert [read_adapter(tmp_path / f"adapter-{i:04d}", BASE).rank for i in range(6)] == [4, 8] * 3


@pytest.mark.e2e  # starts worker processes that each import torch
def test_parallel_writers_give_the_same_files(tmp_path):
    base = ModelArgs.from_name("tiny")
    serial = make_adapters(base, 5, [4, 8], ["q_proj", "v_proj"], tmp_path / "one")
    parallel = make_adapters(base, 5, [4, 8], ["q_proj", "v_proj"], tmp_path / "two", jobs=2)
    for a, b in zip(serial, parallel):
        x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        assert is_current(b, plan_adapters(base, 5, [4, 8], ["q_proj", "v_proj"], tmp_path / "one")[int(b.name[-4:])].stamp)
        assert (a / "adapter_config.json").read_text() == (b / "adapter_config.json").read_text()
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ValueError, match="jobs=0"):
        make_adapters(base, 1, [4], ["q_proj"], tmp_path / "three", jobs=0)
