"""engines/model/blas.py and extra.cublaslt: the base matmuls of forward passes of up to N tokens go through
cuBLASLt (CUDA), the process's own library above; one setting for the process, set by the engine's extra."""
import pytest
import torch

from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model import blas
from engines.registry import create_engine


@pytest.fixture
def restore_blas():
    before = blas.max_tokens()
    yield
    blas.set_max_tokens(before)


def test_the_rule_by_token_count_and_its_refusals(restore_blas):
    assert blas.MAX_TOKENS == blas.max_tokens() == 96  # the default (H200, run 16)
    assert (blas.library(1), blas.library(96), blas.library(97)) == ("cublaslt", "cublaslt", None)
    blas.set_max_tokens(0)
    assert blas.library(1) is None
    blas.set_max_tokens(blas.ALL)
    assert blas.library(1 << 40) == "cublaslt"
    with pytest.raises(ValueError, match="must be >= 0"):
        blas.set_max_tokens(-1)
    assert blas.max_tokens() == blas.ALL  # refused: unchanged
    cpu = torch.device("cpu")
    assert blas.in_effect(cpu) == 0 and blas.describe(cpu) == "torch's own on cpu (the switch applies to CUDA only)"
    before = torch.backends.cuda.preferred_blas_library()
    blas.select(cpu, 1)  # nothing to set off CUDA
    assert torch.backends.cuda.preferred_blas_library() == before


def test_the_profile_flag_states_the_default_it_leaves_in_place():
    import argparse

    from harness.commands.profile import register
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    help_text = sub.choices["profile"].format_help().replace("\n", " ")
    assert f"passes of up to {blas.MAX_TOKENS} tokens" in " ".join(help_text.split())


def test_the_engine_extra_sets_it_for_the_process_and_refuses_nonsense(restore_blas):
    for value, want in ((True, blas.ALL), (False, 0), (32, 32)):
        create_engine(EngineConfig(model="tiny", device="cpu", extra={"cublaslt": value})).close()
        assert blas.max_tokens() == want
    blas.set_max_tokens(8)
    create_engine(EngineConfig(model="tiny", device="cpu", extra={"cublaslt": "auto"})).close()
    assert blas.max_tokens() == 8  # auto keeps the process's setting
    for bad in ("maybe", 0, -3, 2.5):
        with pytest.raises(ValueError, match=r"extra\.cublaslt=.* must be true, false or a token count >= 1, or auto"):
            create_engine(EngineConfig(model="tiny", device="cpu", extra={"cublaslt": bad}))


def test_every_forward_pass_selects_the_library_for_its_own_token_count(monkeypatch):
    seen = []
    monkeypatch.setattr(blas, "select", lambda device, tokens: seen.append((device.type, tokens)))
    eng = create_engine(EngineConfig(model="tiny", device="cpu"))
    for i in range(3):
        eng.add_request(Request(f"r{i}", [5 + i] * (7 + i), None, SamplingParams(max_tokens=3, ignore_eos=True)))
    while eng.has_unfinished():
        eng.step()
    eng.close()
    assert seen and all(d == "cpu" for d, _ in seen)
    assert seen[0][1] == 7 + 8 + 9 and (("cpu", 3) in seen)  # the three prompts in one pass, then their decodes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's BLAS library is chosen on CUDA only")
def test_on_the_gpu_the_library_follows_the_pass_and_the_tokens_do_not_change(restore_blas):
    def serve(value):
        eng = create_engine(EngineConfig(model="tiny", device="cuda", dtype="float32", num_kv_blocks=256,
                                         extra={"cublaslt": value, "capture_graphs": False, "warmup": False}))
        for i in range(4):
            eng.add_request(Request(f"r{i}", [9 + i] * (70 + i), None, SamplingParams(max_tokens=6, ignore_eos=True)))
        toks = {}
        while eng.has_unfinished():
            for o in eng.step():
                toks.setdefault(o.request_id, []).extend(o.new_token_ids)
        eng.close()
        return toks
    own = torch.backends.cuda.preferred_blas_library()
    want = serve(False)
    assert serve(8) == want and serve(True) == want
    blas.set_max_tokens(8)
    blas.select(torch.device("cuda"), 8)
    assert torch.backends.cuda.preferred_blas_library() == torch._C._BlasBackend.Cublaslt
    blas.select(torch.device("cuda"), 9)
    assert torch.backends.cuda.preferred_blas_library() == own


def test_the_matmul_benchmark_times_every_base_matmul_beside_its_floors(tmp_path, capsys):
    import json

    from engines.model import blas_bench
    from engines.model.config import ModelArgs
    out = tmp_path / "blas.json"
    assert blas_bench.main(["--model", "tiny", "--tokens", "1,3", "--device", "cpu", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    args = ModelArgs.from_name("tiny")
    assert [(r["matmul"], r["tokens"]) for r in d["matmuls"]] == [
        (m, t) for m in ("qkv", "o", "gate_up", "down", "lm_head") for t in (1, 3)]
    qkv = d["matmuls"][1]
    assert (qkv["out_features"], qkv["in_features"], qkv["per_step"]) == (args.q_size + 2 * args.kv_size, args.dim,
                                                                          args.n_layers)
    assert qkv["byte_floor_us"] == pytest.approx((qkv["out_features"] * qkv["in_features"] + 3 * args.dim
                                                  + 3 * qkv["out_features"]) * 4 / d["copy_bytes_per_s"] * 1e6)
    step = d["steps"][0]
    assert step["own_ms"] == pytest.approx(sum(r["own_us"] * r["per_step"] for r in d["matmuls"] if r["tokens"] == 1)
                                           / 1e3) == step["best_per_matmul_ms"]
    assert d["command"].endswith("--tokens 1,3 --device cpu --out " + str(out))
    assert "| 3 |" in capsys.readouterr().out
    assert blas_bench.main(["--tokens", "0"]) == 2
