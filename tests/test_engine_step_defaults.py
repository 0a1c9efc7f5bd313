"""The step kind an engine takes when its config does not say (engines/multilora/engine.py): mixed steps on the
CPU; on CUDA with graphs, mixed steps that replay graphs and a step budget that fits them (measured on an H200,
docs/performance.md run 6) and overlapped steps (run 7); separate steps for the merged baseline and for CUDA
without graphs."""
from __future__ import annotations

import types

import pytest
import torch

from engines.config import EngineConfig
from engines.merged import MergedEngine
from engines.multilora.engine import MIXED_GRAPH_ROWS, STEP_TOKENS, MultiLoRAEngine


def resolved(cls, device: str, cuda_graphs: bool = True, **extra):
    """(mixed steps, graph rows, step tokens) as the engine's __init__ resolves them, without building a model."""
    eng = cls.__new__(cls)
    eng.device = torch.device(device)
    eng.config = EngineConfig(model="tiny", cuda_graphs=cuda_graphs, max_num_seqs=64, extra=extra)
    return eng._mixed_steps(), eng._graph_rows(), eng._step_tokens()


@pytest.mark.parametrize("cls, device, graphs, extra, expected", [
    (MultiLoRAEngine, "cuda", True, {}, True),  # measured: +42% output tok/s at saturation (run 7)
    (MultiLoRAEngine, "cuda", False, {}, False),
    (MultiLoRAEngine, "cpu", True, {}, False),  # torch on the CPU runs each op as it is called: nothing to overlap
    (MultiLoRAEngine, "cpu", True, {"overlap": True}, True),
    (MultiLoRAEngine, "cuda", True, {"overlap": False}, False),
    (MergedEngine, "cuda", True, {}, False),
])
def test_overlap_defaults(cls, device, graphs, extra, expected):
    eng = cls.__new__(cls)
    eng.device = torch.device(device)
    eng.config = EngineConfig(model="tiny", cuda_graphs=graphs, extra=extra)
    assert eng._overlap() is expected


@pytest.mark.parametrize("cls, device, graphs, extra, expected", [
    (MultiLoRAEngine, "cpu", True, {}, (True, 0, STEP_TOKENS)),
    (MultiLoRAEngine, "cuda", True, {}, (True, MIXED_GRAPH_ROWS, 64 + MIXED_GRAPH_ROWS)),
    (MultiLoRAEngine, "cuda", False, {}, (False, 0, STEP_TOKENS)),  # eager mixed steps measured slower
    (MultiLoRAEngine, "cuda", True, {"mixed_graphs": False}, (True, 0, STEP_TOKENS)),
    (MultiLoRAEngine, "cuda", True, {"mixed_steps": False}, (False, 0, STEP_TOKENS)),
    (MultiLoRAEngine, "cuda", True, {"step_tokens": 1000}, (True, MIXED_GRAPH_ROWS, 1000)),
    (MultiLoRAEngine, "cpu", True, {"mixed_graphs": True}, (True, MIXED_GRAPH_ROWS, 64 + MIXED_GRAPH_ROWS)),
    (MergedEngine, "cuda", True, {}, (False, 0, STEP_TOKENS)),  # the baseline as it was measured
    (MergedEngine, "cpu", True, {}, (True, 0, STEP_TOKENS)),
])
def test_step_kind_defaults(cls, device, graphs, extra, expected):
    assert resolved(cls, device, graphs, **extra) == expected


def test_the_step_kind_in_effect_is_exported():
    """engine.stats() (so /metrics: lora_fleet_mixed_steps, lora_fleet_step_tokens, lora_fleet_overlap) says which
    kind ran."""
    eng = MultiLoRAEngine.__new__(MultiLoRAEngine)
    eng.scheduler = types.SimpleNamespace(config=types.SimpleNamespace(mixed_steps=True, step_tokens=320),
                                          waiting=[], running=[], num_preemptions=0)
    eng.blocks = types.SimpleNamespace(num_used=0, num_blocks=8)
    eng.pool = types.SimpleNamespace(stats=lambda: {})
    eng.last_batch_size = eng.last_decode_size = eng.decode_tokens = eng.steps = eng.tokens_generated = 0
    eng.last_step_s, eng.step_s = 0.0, 2.5
    eng.sampler = types.SimpleNamespace(wait_s=1.0)
    eng.overlap = True
    eng.runner = types.SimpleNamespace(lora_steps=5, expand_rows_steps=3, joint_steps=2)
    stats = eng.stats()
    assert stats["lora_steps"] == 5 and stats["expand_rows_steps"] == 3  # the expand path the steps took
    assert stats["joint_steps"] == 2  # and the joint path
    assert stats["step_seconds"] == 2.5 and stats["device_wait_seconds"] == 1.0  # the engine thread's time
    assert stats["mixed_steps"] == 1.0 and stats["step_tokens"] == 320 and stats["overlap"] == 1.0
