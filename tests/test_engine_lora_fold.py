"""extra.lora_fold: q,k,v and o LoRA outputs computed apart and added by the next fused op give the tokens of
the shrink/expand pair; extra.lora_stream takes a token count; bad values are refused."""
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model.config import ModelArgs
from engines.registry import create_engine

ARGS = ModelArgs.from_name("tiny")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    make_adapters(ARGS, 4, [4, 8, 16], ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], root,
                  dtype=torch.float32)
    return root


def serve(eng, n=10):
    """Greedy tokens of n requests over the base and four adapters; counts the LoRA calls that were folded."""
    import engines.model.llama as llama
    folded = []
    real = llama.lora_linear_folded

    def count(x, *args):
        y, f = real(x, *args)
        folded.append(f is not None)
        return y, f
    llama.lora_linear_folded = count
    try:
        names = [None, "adapter-0000", "adapter-0001", "adapter-0002", "adapter-0003"]
        for i in range(n):
            eng.add_request(Request(f"r{i}", [256, 5 + i, 9, 7 + i][: 2 + i % 3] * (1 + i % 4), names[i % 5],
                                    SamplingParams(max_tokens=5 + i % 4, ignore_eos=True)))
        toks = {}
        while eng.has_unfinished():
            for o in eng.step():
                toks.setdefault(o.request_id, []).extend(o.new_token_ids)
    finally:
        llama.lora_linear_folded = real
    return toks, folded


def make(adapter_dir, **extra):
    return create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir), extra=extra))


def test_folded_lora_gives_the_tokens_of_the_pair(adapter_dir):
    want, none_folded = serve(make(adapter_dir))
    got, folded = serve(make(adapter_dir, lora_fold=True))
    assert got == want
    assert not any(none_folded) and sum(folded) > len(folded) // 4  # decodes (within the side stream's bound) fold
    assert not all(folded)  # longer steps (the first: every prompt) take the pair


def test_lora_stream_takes_a_token_count_and_refuses_nonsense(adapter_dir):
    eng = make(adapter_dir, lora_fold=True, lora_stream=4)
    assert all(s.fold == (g in ("qkv", "o")) for g, s in eng.model.lora_stacks.items())
    for bad in (0, -2, "yes", 2.5):
        with pytest.raises(ValueError, match="extra.lora_stream"):
            make(adapter_dir, lora_stream=bad)
    with pytest.raises(ValueError, match="extra.lora_fold"):
        make(adapter_dir, lora_fold="on")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream exists on a GPU only")
def test_on_the_gpu_folded_lora_beside_the_base_matmul_gives_the_tokens_of_the_pair(adapter_dir):
    gpu = dict(model="tiny", device="cuda", dtype="float32", adapters=str(adapter_dir), num_kv_blocks=512)
    # the pair (the fold and the joint path are CUDA's defaults)
    plain = create_engine(EngineConfig(**gpu, extra={"lora_fold": False, "lora_joint": False}))
    want, none_folded = serve(plain)
    plain.close()
    assert not any(none_folded)
    # graphs captured at first use, not at start, so the counting wrapper sees the calls they capture
    eng = create_engine(EngineConfig(**gpu, extra={"lora_fold": True, "lora_stream": 64, "capture_graphs": False,
                                                   "warmup": False, "lora_joint": False}))
    assert eng.model.lora_stacks["qkv"].stream is not None
    got, folded = serve(eng)
    assert got == want and any(folded)
    eng.close()


def test_the_fold_is_the_default_on_cuda_only_and_the_profile_paths_follow_it():
    """lora_fold unset: on with CUDA (run 14), off elsewhere. A profile's fused_lora modes and nofold fold as the
    engine was configured (nofold never); the pair's own paths (segments, rows, ...) never; fold always."""
    from types import SimpleNamespace

    import engines.profile as prof
    from engines.multilora.engine import FOLD_DEFAULT_CUDA

    eng = create_engine(EngineConfig(model="tiny", device="cpu"))
    assert eng.lora_fold is False and FOLD_DEFAULT_CUDA is True
    eng.close()
    for configured in (True, False):
        seen = {}
        for mode in ("auto", "off", prof.NO_FOLD, prof.FOLD, prof.SEGMENTS, prof.ROWS):
            model = SimpleNamespace(use_lora_fold=lambda on, m=mode: seen.__setitem__(m, on),
                                    use_shrink_rows=lambda on: None, use_fused_lora=lambda mode: None)
            runner = SimpleNamespace(use_expand_rows=lambda *rule: None, use_joint=lambda n: None)
            fake = SimpleNamespace(model=model, runner=runner, config=SimpleNamespace(extra={}), lora_fold=configured,
                                   _expand_rows=lambda: (0, 0.0, 0), joint_tokens=0)
            prof.set_lora_path(fake, mode)
        assert seen == {"auto": configured, "off": configured, prof.NO_FOLD: False, prof.FOLD: True,
                        prof.SEGMENTS: False, prof.ROWS: False}
    assert prof._fused_mode(prof.NO_FOLD) == "auto" and prof._fused_mode(prof.SEGMENTS) is False
