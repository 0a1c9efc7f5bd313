"""extra.lora_one_launch: LoRA calls that shrink and expand by rows do both in one launch (kernels/lora_rows_pair.py)
and give the tokens of the two launches; the extra takes true, false or a token count and refuses anything else.
On the CPU the references run either way (the call's path is still the one-launch op); on a GPU the kernel runs,
graphs captured."""
import pytest
import torch

from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import adapter_dir, make, serve  # noqa: F401 (the fixture)


def count_one_launch(monkeypatch):
    """Counts kernels.ops.lora_rows_pair calls (the model calls it through the module)."""
    import kernels.ops as kops
    calls = []
    real = kops.lora_rows_pair

    def counted(x, *args, **kw):
        calls.append(x.shape[0])
        return real(x, *args, **kw)
    monkeypatch.setattr(kops, "lora_rows_pair", counted)
    return calls


def test_one_launch_gives_the_tokens_of_two_and_is_taken_only_where_rows_go(adapter_dir, monkeypatch):  # noqa: F811
    want, _ = serve(make(adapter_dir, lora_expand_rows=64))
    calls = count_one_launch(monkeypatch)
    eng = make(adapter_dir, lora_expand_rows=64, lora_one_launch=True)
    assert eng.lora_one_launch == 64 and all(s.one_launch == 64 for s in eng.model.lora_stacks.values())
    got, _ = serve(eng)
    assert got == want
    assert calls and max(calls) <= 64  # decode steps (by rows, within the bound) launch once
    calls.clear()
    serve(make(adapter_dir, lora_expand_rows=64, lora_one_launch=2))
    assert calls and max(calls) <= 2  # steps of up to 2 tokens only
    calls.clear()
    serve(make(adapter_dir, lora_expand_rows=64, lora_shrink_rows=False, lora_one_launch=True))
    assert not calls  # a shrink by segments has no one-launch form
    serve(make(adapter_dir, lora_expand_rows=64))
    assert not calls  # off by default


def test_lora_one_launch_refuses_nonsense(adapter_dir):  # noqa: F811
    assert make(adapter_dir, lora_one_launch=False).lora_one_launch == 0
    for bad in (-1, "yes", 2.5):
        with pytest.raises(ValueError, match="extra.lora_one_launch"):
            make(adapter_dir, lora_one_launch=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the one-launch kernel runs on a GPU only")
def test_on_the_gpu_one_launch_gives_the_tokens_of_two_in_graphs_and_folded(adapter_dir, monkeypatch):  # noqa: F811
    gpu = dict(model="tiny", device="cuda", dtype="float32", adapters=str(adapter_dir), num_kv_blocks=512)
    for fold in (True, False):  # beside the base matmul on the side stream, folded; after it on the main stream
        extra = {"lora_fold": fold, "lora_stream": fold, "lora_expand_rows": 64}
        plain = create_engine(EngineConfig(**gpu, extra=extra))
        want, _ = serve(plain)
        plain.close()
        calls = count_one_launch(monkeypatch)
        eng = create_engine(EngineConfig(**gpu, extra={**extra, "lora_one_launch": True}))
        got, _ = serve(eng)
        eng.close()
        assert got == want and calls  # captured at start: the calls counted are the captures' and eager steps'
