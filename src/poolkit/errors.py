"""The errors poolkit raises; all of them derive from :class:`PoolError`."""

from __future__ import annotations

__all__ = [
    "PoolClosed",
    "PoolError",
    "PoolFull",
    "PoolTimeout",
    "ReleaseError",
    "ResourceCreationError",
]


class PoolError(Exception):
    """Base class of every error raised by poolkit itself.

    Example::

        try:
            with pool.acquire(timeout=1.0) as conn:
                ...
        except poolkit.PoolError as exc:
            log.warning("pool trouble: %s", exc)
    """

    __module__ = "poolkit"


class PoolTimeout(PoolError, TimeoutError):
    """No resource could be lent within the caller's timeout.

    ``phase`` says what the borrower was waiting for: ``"wait"`` (a resource to come back),
    ``"create"`` (a new resource being created, or creation failing) or ``"check"``.
    ``waited_s`` is how long it waited. ``__cause__`` is the last creation error, if any.
    """

    __module__ = "poolkit"

    def __init__(self, message: str, *, pool: str = "", phase: str = "wait", waited_s: float = 0.0):
        super().__init__(message)
        self.pool = pool
        self.phase = phase
        self.waited_s = waited_s


class PoolClosed(PoolError):
    """The pool is closed (or closing) and lends nothing any more."""

    __module__ = "poolkit"


class PoolFull(PoolError):
    """The wait queue is at ``max_waiting``: the borrower is refused at once instead of queued."""

    __module__ = "poolkit"


class ResourceCreationError(PoolError):
    """The factory failed to create a resource; ``__cause__`` holds the factory's error."""

    __module__ = "poolkit"


class ReleaseError(PoolError, RuntimeError):
    """A lease was released twice, or released into a pool that did not lend it.

    The pool is left exactly as it was.
    """

    __module__ = "poolkit"
