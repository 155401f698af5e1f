"""Event listeners of a pool: registration, and emission that never breaks the pool."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._types import EVENT_KINDS, PoolEvent

__all__ = ["Listeners", "logger"]

logger = logging.getLogger("poolkit")

Callback = Callable[[PoolEvent], object]


class Listeners:
    """Callbacks by event kind; an empty tuple per kind keeps the no-listener case free."""

    __slots__ = ("acquire", "by_kind", "release")

    def __init__(self) -> None:
        self.by_kind: dict[str, tuple[Callback, ...]] = dict.fromkeys(EVENT_KINDS, ())
        # the two kinds emitted on the hot path, kept as attributes for a cheap truth test
        self.acquire: tuple[Callback, ...] = ()
        self.release: tuple[Callback, ...] = ()

    def add(self, kind: str, callback: Callback) -> Callable[[], None]:
        """Register ``callback`` for ``kind``; return a function that unregisters it."""
        if kind not in self.by_kind:
            known = ", ".join(EVENT_KINDS)
            raise ValueError(f"unknown event kind {kind!r}; expected one of: {known}")
        if not callable(callback):
            raise TypeError(f"event callback must be callable, not {type(callback).__name__}")
        self._set(kind, (*self.by_kind[kind], callback))

        def remove() -> None:
            callbacks = list(self.by_kind[kind])
            if callback in callbacks:
                callbacks.remove(callback)
                self._set(kind, tuple(callbacks))

        return remove

    def _set(self, kind: str, callbacks: tuple[Callback, ...]) -> None:
        self.by_kind[kind] = callbacks
        if kind in ("acquire", "release"):
            setattr(self, kind, callbacks)

    def emit(self, event: PoolEvent) -> None:
        """Call every listener of ``event.kind``; log and swallow their errors."""
        for callback in self.by_kind[event.kind]:
            try:
                callback(event)
            except Exception:
                logger.exception(
                    "poolkit: %s listener %r of pool %r failed", event.kind, callback, event.pool
                )

    def wants(self, kind: str) -> bool:
        """True when somebody listens to ``kind``."""
        return bool(self.by_kind[kind])
