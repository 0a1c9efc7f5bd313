"""Every preset's LoRA shapes launch with the default configs on the GPU (shrink, expand and the fused kernel; 1-3
slices, ranks 8-128) and match the reference.

On a CUDA machine only (the interpreter has no shared-memory limit): the default configs are launched as
a GPU without a tuned config file would launch them, and launch_fitting must find a config that fits.
"""
import pytest
import torch

from engines.model.config import PRESETS, ModelArgs
from engines.model.llama import LORA_GROUPS
from kernels import launch
from kernels.meta import LoRAMeta
from kernels.reference import lora_expand_ref, lora_shrink_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="shared-memory limits exist on GPUs only")


def _shapes():
    """(in_features, out sizes) of every LoRA group of every preset, without repeats."""
    seen = {}
    for name in PRESETS:
        shapes = ModelArgs.from_name(name).module_shapes()
        for mods in LORA_GROUPS.values():
            key = (shapes[mods[0]][0], tuple(shapes[m][1] for m in mods))
            seen.setdefault(key, name)
    return sorted(seen)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _cases(rank, tokens, g):
    """Inputs per preset shape (and float32 on the tiny ones): (what, x, a, b, scales, ranks, offs, meta, y0)."""
    dev = "cuda"
    for hidden, widths in _shapes():
        # float32 (twice the shared memory per tile) on the tiny preset, as its agreement check runs it
        for dtype in [torch.bfloat16] + ([torch.float32] if hidden <= 128 else []):
            slots_n = 4
            x = torch.randn(tokens, hidden, device=dev, generator=g).to(dtype)
            a = (torch.randn(slots_n, len(widths), rank, hidden, device=dev, generator=g) / hidden ** 0.5).to(dtype)
            b = (torch.randn(slots_n, sum(widths), rank, device=dev, generator=g) / rank ** 0.5).to(dtype)
            scales = torch.full((slots_n,), 2.0, device=dev)
            ranks = torch.tensor([rank, rank // 2, rank, 1], dtype=torch.int32, device=dev)
            offs = [0]
            for w in widths:
                offs.append(offs[-1] + w)
            offs_t = torch.tensor(offs, dtype=torch.int32, device=dev)
            token_slots = [(t % 5) - 1 for t in range(tokens)]  # -1 and every slot
            meta = LoRAMeta(tokens, slots_n, device=dev).prepare(token_slots)
            y0 = torch.randn(tokens, sum(widths), device=dev, generator=g).to(dtype)
            what = f"hidden {hidden} widths {widths} rank {rank} tokens {tokens} {dtype}"
            yield what, x, a, b, scales, ranks, offs_t, meta, y0


def _reference_delta(x, a, b, meta, scales, ranks, offs_t, y0):
    ref_buf = torch.zeros(a.shape[1], x.shape[0], a.shape[2], device=x.device, dtype=torch.float32)
    lora_shrink_ref(x.float(), a.float(), meta, scales, ranks, ref_buf)
    ref_y = y0.float().clone()
    lora_expand_ref(ref_buf, b.float(), meta, ranks, offs_t, ref_y)
    return ref_y - y0.float()


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("tokens", [1, 64, 256, 4096])
def test_default_configs_launch_for_every_preset_shape(rank, tokens, monkeypatch):
    from kernels.lora_expand import lora_expand
    from kernels.lora_shrink import lora_shrink

    monkeypatch.setattr(launch, "lookup", lambda op, key, device, default: default)  # no tuned file
    g = torch.Generator(device="cuda").manual_seed(rank * 7 + tokens)
    for what, x, a, b, scales, ranks, offs_t, meta, y0 in _cases(rank, tokens, g):
        buf = torch.full((a.shape[1], tokens, rank), float("nan"), device="cuda")
        lora_shrink(x, a, meta, scales, ranks, buf)
        y = y0.clone()
        lora_expand(buf, b, meta, ranks, offs_t, y)
        torch.cuda.synchronize()
        assert _rel(y.float() - y0.float(), _reference_delta(x, a, b, meta, scales, ranks, offs_t, y0)) < 2e-2, what


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("tokens", [1, 16, 64, 256, 4096])
def test_fused_default_config_launches_for_every_preset_shape(rank, tokens, monkeypatch):
    """The fused kernel's default config (decode sizes, and prefill sizes that fused_lora=true forces) launches,
    stepped down by launch_fitting where Triton refuses it, and matches the reference."""
    from kernels.lora_fused import lora_fused

    monkeypatch.setattr(launch, "lookup", lambda op, key, device, default: default)  # no tuned file
    g = torch.Generator(device="cuda").manual_seed(rank * 11 + tokens)
    for what, x, a, b, scales, ranks, offs_t, meta, y0 in _cases(rank, tokens, g):
        y = y0.clone()
        lora_fused(x, a, b, meta, scales, ranks, offs_t, y)
        torch.cuda.synchronize()
        assert _rel(y.float() - y0.float(), _reference_delta(x, a, b, meta, scales, ranks, offs_t, y0)) < 2e-2, what


@pytest.mark.parametrize("rank", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("tokens", [1, 64, 256])
def test_rows_pair_default_configs_launch_for_every_preset_shape(rank, tokens, monkeypatch):
    """The shrink and expand by rows (decode sizes) launch at their default configs and match the reference."""
    from kernels.lora_expand_rows import lora_expand_rows
    from kernels.lora_shrink_rows import lora_shrink_rows

    monkeypatch.setattr(launch, "lookup", lambda op, key, device, default: default)  # no tuned file
    g = torch.Generator(device="cuda").manual_seed(rank * 13 + tokens)
    for what, x, a, b, scales, ranks, offs_t, meta, y0 in _cases(rank, tokens, g):
        buf = torch.full((a.shape[1], tokens, rank), float("nan"), device="cuda")
        got = lora_shrink_rows(x, a, meta, scales, ranks, buf)
        y = y0.clone()
        lora_expand_rows(got, b, meta, ranks, offs_t, y)
        torch.cuda.synchronize()
        assert _rel(y.float() - y0.float(), _reference_delta(x, a, b, meta, scales, ranks, offs_t, y0)) < 2e-2, what
