"""AdapterLRU: which adapters hold which of a fixed number of slots, with pins and least-recently-used eviction (no torch)."""
from __future__ import annotations

from collections import OrderedDict


class AdapterLRU:
    """Maps adapter names to slot numbers 0..capacity-1.

    A pinned entry (pin count > 0: running sequences use it, or a copy into it is in flight) is never
    evicted. assign() takes a free slot, else evicts the least recently used unpinned entry that is
    not protected (adapters that waiting requests want).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"adapter LRU: capacity={capacity} must be >= 1")
        self.capacity = capacity
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._pins: dict[str, int] = {}
        self._free: list[int] = []  # slots given back, reused before new ones
        self._next = 0  # slots below this have been handed out at least once
        self.evictions = 0

    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def names(self) -> list[str]:
        return list(self._slots)

    def slot(self, name: str) -> int | None:
        return self._slots.get(name)

    def touch(self, name: str) -> None:
        self._slots.move_to_end(name)

    def pin(self, name: str) -> None:
        if name not in self._slots:
            raise KeyError(f"adapter LRU: cannot pin {name!r}: it holds no slot")
        self._pins[name] = self._pins.get(name, 0) + 1
        self.touch(name)

    def unpin(self, name: str) -> None:
        n = self._pins.get(name, 0)
        if n <= 0:
            raise KeyError(f"adapter LRU: {name!r} is not pinned")
        if n == 1:
            del self._pins[name]
        else:
            self._pins[name] = n - 1

    def pinned(self, name: str) -> bool:
        return self._pins.get(name, 0) > 0

    def victim(self, protected: frozenset[str] | set[str] = frozenset()) -> str | None:
        for name in self._slots:  # oldest first
            if not self.pinned(name) and name not in protected:
                return name
        return None

    def assign(self, name: str, protected: frozenset[str] | set[str] = frozenset()) -> tuple[int, str | None] | None:
        """A slot for `name`: (slot, evicted name or None), or None when every slot is pinned or protected."""
        if name in self._slots:
            self.touch(name)
            return self._slots[name], None
        evicted = None
        if not self._free and self._next < self.capacity:
            self._free.append(self._next)
            self._next += 1
        if not self._free:
            evicted = self.victim(protected)
            if evicted is None:
                return None
            self._free.append(self._slots.pop(evicted))
            self.evictions += 1
        slot = self._free.pop()
        self._slots[name] = slot
        return slot, evicted

    def remove(self, name: str) -> int | None:
        """Free the slot of `name` (an error while pinned); returns the slot it held."""
        if self.pinned(name):
            raise RuntimeError(f"adapter LRU: {name!r} is in use and cannot be removed")
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._free.append(slot)
        return slot
