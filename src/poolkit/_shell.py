"""What the thread and asyncio shells share: hook resolution, events, errors, repr, fork."""

from __future__ import annotations

import os
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from ._config import PoolConfig
from ._core import Entry, PoolCore
from ._events import Listeners, logger
from ._types import Health, PoolEvent, PoolStats, ResourceInfo, default_is_broken
from .errors import PoolTimeout

__all__ = ["Hooks", "ShellBase", "resolve_hooks"]

_HOOKS = ("create", "destroy", "check", "reset", "is_broken")


class Hooks:
    """The resolved lifecycle hooks of a pool; ``None`` where the default does nothing."""

    __slots__ = ("check", "create", "custom_is_broken", "destroy", "is_broken", "reset")

    def __init__(
        self,
        create: Callable[..., Any],
        destroy: Callable[..., Any] | None,
        check: Callable[..., Any] | None,
        reset: Callable[..., Any] | None,
        is_broken: Callable[[Any, BaseException | None], bool] | None,
    ) -> None:
        self.create = create
        self.destroy = destroy
        self.check = check
        self.reset = reset
        self.custom_is_broken = is_broken is not None
        self.is_broken: Callable[[Any, BaseException | None], bool] = is_broken or default_is_broken


def resolve_hooks(
    factory: object, base: type, overrides: dict[str, Callable[..., Any] | None]
) -> Hooks:
    """Merge a factory object or ``create`` callable with keyword hooks; validate them."""
    found: dict[str, Callable[..., Any] | None] = dict.fromkeys(_HOOKS)
    if factory is not None:
        if isinstance(factory, base) or (
            hasattr(factory, "create") and not isinstance(factory, type)
        ):
            for name in _HOOKS:
                method = getattr(factory, name, None)
                default = getattr(base, name, None)
                # a hook left at the base class's do-nothing default costs nothing
                if method is not None and getattr(method, "__func__", None) is not default:
                    found[name] = method
            if isinstance(factory, base) and found["create"] is None:
                raise TypeError(f"{type(factory).__name__} must implement create()")
        elif callable(factory):
            found["create"] = factory
        else:
            raise TypeError(
                "the first argument must be a create() callable or a Factory object, "
                f"not {type(factory).__name__}"
            )
    for name, hook in overrides.items():
        if hook is not None:
            found[name] = hook
    for name, hook in found.items():
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
    create = found["create"]
    if create is None:
        raise TypeError("a pool needs a create() callable or a Factory object")
    return Hooks(create, found["destroy"], found["check"], found["reset"], found["is_broken"])


# -- fork safety: a child process starts with empty pools and never touches the parent's ----------

_pools: weakref.WeakSet[ShellBase] = weakref.WeakSet()
#: Resources inherited from the parent: kept referenced forever in the child so that no
#: finalizer ever closes (or, like libpq's, sends a goodbye over) the parent's connections.
_inherited: list[object] = []


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._reinit_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ShellBase:
    """State and helpers common to Pool and AsyncPool (no I/O, no locking here)."""

    _core: PoolCore
    _hooks: Hooks
    _listeners: Listeners
    _clock: Callable[[], float]

    def _init_shell(
        self, config: PoolConfig, hooks: Hooks, clock: Callable[[], float] | None
    ) -> None:
        self._config = config
        self._core = PoolCore(config)
        self._hooks = hooks
        self._listeners = Listeners()
        self._clock = clock or time.monotonic
        cai = config.check_after_idle
        # borrow without a check while idle for less than this many seconds
        self._check_window = float("inf") if hooks.check is None or cai is None else cai
        self._track_leaks = config.leak_timeout is not None
        # the fast path lends only inside the check window, and never while tracking leaks
        self._fast_window = float("-inf") if self._track_leaks else self._check_window
        self._reset = hooks.reset
        self._custom_is_broken = hooks.custom_is_broken
        self._on_acquire = self._listeners.acquire
        self._on_release = self._listeners.release
        _pools.add(self)

    def _reinit_after_fork(self) -> None:
        core = self._core
        _inherited.extend(entry.resource for entry in core.entries.values())
        _inherited.extend(entry.resource for entry, _ in core.trash)
        fresh = PoolCore(core.config)
        if core.closed:
            fresh.close()
        self._core = fresh

    # -- public inspection --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name (given, or ``pool-N``)."""
        return self._core.config.name

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._core.closed

    @property
    def config(self) -> PoolConfig:
        """The pool's current, validated options."""
        return self._core.config

    def on(self, kind: str, callback: Callable[[PoolEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` on each event of ``kind``; returns an unsubscribe function.

        Kinds: ``create``, ``create_error``, ``acquire``, ``release``, ``destroy``,
        ``timeout``, ``leak``. Callbacks run outside the pool's lock; their errors are logged.
        """
        remove = self._listeners.add(kind, callback)
        self._refresh_listeners()

        def unsubscribe() -> None:
            remove()
            self._refresh_listeners()

        return unsubscribe

    def _refresh_listeners(self) -> None:
        self._on_acquire = self._listeners.acquire
        self._on_release = self._listeners.release

    def _budget_status(self) -> str | None:
        budget = getattr(self, "_budget", None)
        if budget is None:
            return None
        try:
            return str(budget.status())
        except Exception:
            return "unavailable"

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's gauges and counters."""
        return self._core.stats(self._budget_status())

    def health(self) -> Health:
        """``ok``, ``degraded`` or ``failing``, with reasons: for readiness probes."""
        return self._core.health(self._clock(), self._budget_status())

    def oldest_idle_at(self) -> float | None:
        """Monotonic time at which the least recently used idle resource was returned."""
        return self._core.oldest_idle_at()

    def __repr__(self) -> str:
        state = " closed" if self._core.closed else ""
        return f"<{type(self).__name__} {self.name!r}{state} {self._core.snapshot()}>"

    # -- helpers for the shells -------------------------------------------------------------

    def _emit(self, kind: str, entry: Entry | None = None, **fields: Any) -> None:
        if self._listeners.by_kind[kind]:
            event = PoolEvent(kind, self.name, None if entry is None else entry.id, **fields)
            self._listeners.emit(event)

    def _triage(self, entry: Entry, exc: BaseException | bool | None) -> str | None:
        """Why a returned resource must be destroyed ("broken"), or None to keep it."""
        if exc is True:
            return "broken"
        try:
            broken = self._hooks.is_broken(entry.resource, exc or None)
        except Exception:
            logger.exception("poolkit: pool %r: is_broken hook failed", self.name)
            broken = True
        return "broken" if broken else None

    def _info(self, entry: Entry, now: float) -> ResourceInfo:
        return ResourceInfo(entry.id, now - entry.created_at, now - entry.last_used, entry.uses)

    def _borrow_site(self, entry: Entry) -> None:
        entry.stack = "".join(traceback.format_stack(limit=12)[:-3])
        entry.leak_reported = False

    def _timeout_error(self, waited: float, phase: str) -> PoolTimeout:
        core = self._core
        if core.failures and phase == "wait":
            phase = "create"
        message = (
            f"pool {self.name!r}: no resource within {waited:.2f}s ({phase}); {core.snapshot()}"
        )
        if core.last_error is not None:
            message += f"; last creation error: {type(core.last_error).__name__}"
        if self._track_leaks:
            sites = [
                f"  #{entry.id} held {self._clock() - entry.borrowed_at:.1f}s, borrowed at:\n"
                + (entry.stack or "    (unknown)\n")
                for entry in core.borrowed_entries()[:5]
            ]
            if sites:
                message += "\ncurrent holders:\n" + "".join(sites)
        error = PoolTimeout(message, pool=self.name, phase=phase, waited_s=waited)
        error.__cause__ = core.last_error
        return error

    def _report_leaks(self, leaked: list[Entry], now: float) -> None:
        for entry in leaked:
            held = now - entry.borrowed_at
            logger.warning(
                "poolkit: pool %r: resource #%d held for %.1fs (leak_timeout=%ss); "
                "borrowed at:\n%s",
                self.name,
                entry.id,
                held,
                self._core.config.leak_timeout,
                entry.stack or "(enable leak_timeout to record borrow sites)",
            )
            self._emit("leak", entry, duration_s=held, stack=entry.stack)

    def _log_destroy_error(self, entry: Entry, exc: BaseException) -> None:
        logger.warning(
            "poolkit: pool %r: destroying resource #%d failed: %s: %s",
            self.name,
            entry.id,
            type(exc).__name__,
            exc,
        )
