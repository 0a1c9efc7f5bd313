"""extra.lora_expand_rows: decode-sized LoRA calls expand by rows (kernels/lora_expand_rows.py) and give the
tokens of the segment expand; bad values are refused."""
import pytest
import torch

from engines.config import EngineConfig
from engines.registry import create_engine
from tests.test_engine_lora_fold import adapter_dir, serve  # noqa: F401  (a fixture)


def test_expand_rows_takes_a_token_count_and_refuses_nonsense(adapter_dir):  # noqa: F811
    eng = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                     extra={"lora_expand_rows": 64}))
    assert {s.rows_tokens for s in eng.model.lora_stacks.values()} == {64}
    off = create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                     extra={"lora_expand_rows": False}))
    assert {s.rows_tokens for s in off.model.lora_stacks.values()} == {0}
    for bad in (-1, "yes", 2.5, True):
        with pytest.raises(ValueError, match="extra.lora_expand_rows"):
            create_engine(EngineConfig(model="tiny", device="cpu", adapters=str(adapter_dir),
                                       extra={"lora_expand_rows": bad}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels run on a GPU (the CPU runs references)")
def test_on_the_gpu_the_expand_by_rows_gives_the_tokens_of_the_segment_expand(adapter_dir):  # noqa: F811
    import kernels.lora_expand_rows as rows_mod
    gpu = dict(model="tiny", device="cuda", dtype="float32", adapters=str(adapter_dir), num_kv_blocks=512)
    plain = create_engine(EngineConfig(**gpu))
    want, _ = serve(plain)
    plain.close()
    calls = []
    real = rows_mod.lora_expand_rows

    def count(*args, **kwargs):
        calls.append(args[-1].shape[0])
        return real(*args, **kwargs)
    rows_mod.lora_expand_rows = count
    try:
        eng = create_engine(EngineConfig(**gpu, extra={"lora_expand_rows": 64, "capture_graphs": False,
                                                       "warmup": False}))
        got, _ = serve(eng)
        eng.close()
    finally:
        rows_mod.lora_expand_rows = real
    assert got == want
    assert calls and max(calls) <= 64  # decode-sized calls took the rows expand, longer ones the segments
