"""AdapterPoolAPI: what the engine loop asks of an adapter pool (AdapterPool's slots, MergedPool's weight copies)."""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class AdapterPoolAPI(Protocol):
    """Adapters by name; None is the base model (always ready, slot -1)."""

    def register(self, name: str, path: str, loader: Callable[[], object] | None = None, known=None) -> None:
        """Make `name` servable from a PEFT folder or loader(); raises on an adapter that cannot serve."""

    def unregister(self, name: str) -> None: ...

    def names(self) -> dict[str, str]:
        """Registered adapter -> its path ('' for in-memory loaders)."""

    def want(self, names: list[str | None]) -> None:
        """Start making these ready (in order); never blocks on a device copy."""

    def is_ready(self, name: str | None) -> bool: ...

    def slot(self, name: str | None) -> int:
        """Where a ready adapter sits (slot or copy index); -1 for the base model."""

    def pin(self, name: str | None) -> None:
        """Keep it resident while a running sequence uses it."""

    def unpin(self, name: str | None) -> None: ...

    def pending(self) -> bool:
        """Loads in flight."""

    def finish_loads(self, wait: bool = False) -> list[str]:
        """Complete the loads that are done (all of them with wait); returns the names now ready."""

    def wait_briefly(self, seconds: float = 0.001) -> None: ...

    def take_failed(self) -> dict[str, str]:
        """Adapters whose load failed since the last call -> why (their waiting requests get an error)."""

    def stats(self) -> dict[str, float]: ...

    def close(self) -> None: ...
