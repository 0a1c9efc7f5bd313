"""Adapter LRU policy: free slots first, least recently used eviction, pins and protection (no torch)."""
import pytest

from engines.multilora.adapter_lru import AdapterLRU


def test_fills_free_slots_then_evicts_least_recently_used():
    lru = AdapterLRU(2)
    assert lru.assign("a") == (0, None)
    assert lru.assign("b") == (1, None)
    lru.touch("a")  # b is now the oldest
    slot, evicted = lru.assign("c")
    assert evicted == "b" and slot == 1
    assert lru.names() == ["a", "c"] and lru.evictions == 1


def test_assign_of_resident_adapter_is_a_hit():
    lru = AdapterLRU(1)
    lru.assign("a")
    assert lru.assign("a") == (0, None)
    assert lru.evictions == 0


def test_pinned_and_protected_entries_are_never_evicted():
    lru = AdapterLRU(2)
    lru.assign("a")
    lru.assign("b")
    lru.pin("a")
    assert lru.assign("c", protected={"b"}) is None  # a pinned, b protected
    assert lru.assign("c") == (1, "b")
    lru.pin("c")
    assert lru.assign("d") is None
    lru.unpin("a")
    assert lru.assign("d") == (0, "a")


def test_pin_counts_nest():
    lru = AdapterLRU(1)
    lru.assign("a")
    lru.pin("a")
    lru.pin("a")
    lru.unpin("a")
    assert lru.pinned("a")
    lru.unpin("a")
    assert not lru.pinned("a")
    with pytest.raises(KeyError):
        lru.unpin("a")


def test_remove_frees_the_slot_but_not_while_pinned():
    lru = AdapterLRU(1)
    lru.assign("a")
    lru.pin("a")
    with pytest.raises(RuntimeError, match="in use"):
        lru.remove("a")
    lru.unpin("a")
    assert lru.remove("a") == 0
    assert lru.assign("b") == (0, None)


def test_large_capacity_allocates_lazily():
    lru = AdapterLRU(1 << 30)
    for i in range(100):
        assert lru.assign(f"x{i}") == (i, None)
