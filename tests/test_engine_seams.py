"""The engine's seams: both adapter pools implement AdapterPoolAPI, scheduling policies are objects."""
import torch

from engines.merged import MergedEngine, MergedPool
from engines.multilora.adapter_pool import AdapterPool
from engines.multilora.engine import MultiLoRAEngine
from engines.multilora.policy import ANY, MixedAdapters, OneAdapterPerStep
from engines.multilora.pool_api import AdapterPoolAPI
from engines.multilora.sequence import Sequence, SeqStatus


def test_both_pools_implement_the_pool_interface():
    for cls in (AdapterPool, MergedPool):
        assert issubclass(cls, AdapterPoolAPI)  # every method of the protocol is defined on the class
    assert not issubclass(type("Partial", (), {"want": lambda self, names: None}), AdapterPoolAPI)


def test_take_failed_hands_each_failure_over_once():
    from engines.model.config import ModelArgs
    from engines.model.llama import build_model
    model = build_model(ModelArgs.from_name("tiny"), torch.float32, "cpu")
    model.enable_lora(2, 8, ("qkv",))
    pool = AdapterPool(model, 2, 8, None, torch.device("cpu"), torch.float32)
    try:
        pool.failed["x"] = "file vanished"
        assert pool.take_failed() == {"x": "file vanished"}
        assert pool.take_failed() == {}
    finally:
        pool.close()


def test_engines_name_their_policy():
    assert MultiLoRAEngine.scheduler_policy is MixedAdapters
    assert MergedEngine.scheduler_policy is OneAdapterPerStep
    mixed = MixedAdapters()
    assert mixed.targets([], lambda a: True) == [ANY] and mixed.admits(Sequence("s", [1], "a"), ANY)
    rr = OneAdapterPerStep()
    seqs = [Sequence(f"s{i}", [1], a) for i, a in enumerate(["b", "a", None, "c"])]
    seqs[3].status = SeqStatus.RUNNING
    ready = lambda a: a != "b"  # b is cold and waits: not a target
    assert rr.targets(seqs, ready) == [None, "a", "c"]
    rr.served("a")
    assert rr.targets(seqs, ready) == ["c", None, "a"]
    assert rr.admits(seqs[1], "a") and not rr.admits(seqs[1], "c")
