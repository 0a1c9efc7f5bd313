"""max_lora_rank left unset: the engine's adapter slots take the start adapters' rank (engines.config.slot_rank)."""
import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.config import DEFAULT_SLOT_RANK, EngineConfig, slot_rank
from engines.model.llama import ModelArgs
from engines.registry import create_engine

ARGS = ModelArgs.from_name("tiny")


def test_slot_rank_rounds_the_largest_rank_up_to_a_power_of_two_of_at_least_16():
    assert slot_rank([8]) == 16 and slot_rank([4, 8, 16]) == 16 and slot_rank([32]) == 32
    assert slot_rank([8, 48]) == 64 and slot_rank([128]) == 128 and slot_rank(iter([17])) == 32
    assert slot_rank([]) == DEFAULT_SLOT_RANK == 64  # no adapter at start: room for what is registered later


@pytest.mark.parametrize("engine", ["multilora", "merged"])
def test_engine_sizes_its_slots_from_the_start_adapters_and_refuses_a_larger_one_later(tmp_path, capsys, engine):
    start, later = tmp_path / "start", tmp_path / "later"
    make_adapters(ARGS, 2, [4, 8], ["q_proj", "v_proj"], start, dtype=torch.float32)
    big = make_adapters(ARGS, 1, [32], ["q_proj", "v_proj"], later, prefix="big-", dtype=torch.float32)[0]
    given = EngineConfig(engine=engine, model="tiny", device="cpu", adapters=str(start))
    eng = create_engine(given)
    assert eng.config.max_lora_rank == 16 and given.max_lora_rank is None  # the caller's config is not changed
    assert "adapter slots of rank 16, sized from the 2 start adapter(s)" in capsys.readouterr().err
    if engine == "multilora":
        assert eng.model.lora_stacks["qkv"].a.shape[-2] == 16  # the slots themselves are rank 16
    with pytest.raises(Exception, match=r"big-0000.*rank 32 is above max_rank=16; raise max_lora_rank"):
        eng.register_adapter("big", str(big))  # refused at registration, with the path and the fix
    assert "big" not in eng.adapters()
    eng.close()
    wide = create_engine(EngineConfig(engine=engine, model="tiny", device="cpu", adapters=str(start),
                                      max_lora_rank=32))  # set: kept as given
    assert wide.config.max_lora_rank == 32
    wide.close()


def test_engine_without_start_adapters_keeps_the_default_rank():
    eng = create_engine(EngineConfig(model="tiny", device="cpu"))
    assert eng.config.max_lora_rank == DEFAULT_SLOT_RANK
    eng.close()
