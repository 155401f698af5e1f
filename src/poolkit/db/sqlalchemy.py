"""SQLAlchemy 2 integration: ``PoolkitPool``, a ``sqlalchemy.pool.Pool`` running on poolkit."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .._types import PoolStats
from ..errors import PoolTimeout
from ..pool import Lease
from ..pool import Pool as _PoolkitCore

try:
    from sqlalchemy import exc as _sa_exc
    from sqlalchemy.pool import Pool as _SAPool
except ImportError as _missing:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "poolkit.db.sqlalchemy needs SQLAlchemy 2: pip install 'poolkit[sqlalchemy]'"
    ) from _missing

__all__ = ["PoolkitPool"]

_UNLIMITED = 1 << 20


class PoolkitPool(_SAPool):
    """A SQLAlchemy connection pool whose checkout, waiting and sizing run on poolkit.

    Drop-in for ``QueuePool``: it takes the same ``pool_size``, ``max_overflow``,
    ``timeout`` and ``use_lifo`` arguments (so ``create_engine(..., poolclass=PoolkitPool,
    pool_size=5)`` works), and any :class:`poolkit.Pool` option through
    ``poolkit_options`` or :meth:`configure`. SQLAlchemy keeps doing what it does on top
    of any pool (``reset_on_return`` rollback, ``pool_pre_ping``, ``pool_recycle``,
    invalidation, events); poolkit adds fair FIFO waiting with priorities, idle and
    lifetime eviction with jitter, stats, health and events (``engine.pool.poolkit``).

    Sync engines only: an asyncio engine needs SQLAlchemy's own ``AsyncAdaptedQueuePool``.

    Example::

        from sqlalchemy import create_engine, text
        from poolkit.db.sqlalchemy import PoolkitPool

        engine = create_engine("postgresql+psycopg://postgres@127.0.0.1/test",
                               poolclass=PoolkitPool, pool_size=10, max_overflow=0)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        print(engine.pool.stats())

        # any poolkit option:
        Tuned = PoolkitPool.configure(idle_timeout=60, max_lifetime=1800)
        engine = create_engine(url, poolclass=Tuned)
    """

    _is_asyncio = False
    _defaults: Mapping[str, Any] = {}

    def __init__(
        self,
        creator: Any,
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = True,
        poolkit_options: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        _SAPool.__init__(self, creator, **kw)
        if pool_size < 0:
            raise ValueError(f"pool_size ({pool_size}) must be >= 0 (0 = no limit)")
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self._timeout = timeout
        self._use_lifo = use_lifo
        self._options = {**self._defaults, **(poolkit_options or {})}
        if pool_size == 0 or max_overflow < 0:
            max_size = _UNLIMITED
        else:
            max_size = max(1, pool_size + max_overflow)
        options: dict[str, Any] = {
            "max_size": max_size,
            "acquire_timeout": timeout,
            "order": "lifo" if use_lifo else "fifo",
            "check_after_idle": None,  # SQLAlchemy's pre_ping does liveness
            "max_lifetime": None,  # and pool_recycle does lifetimes
            "name": f"sqlalchemy:{self._orig_logging_name or 'pool'}",
        }
        options.update(self._options)
        self.poolkit: _PoolkitCore[Any] = _PoolkitCore(
            create=self._create_connection, destroy=self._close_record, **options
        )
        self._leases: dict[int, Lease[Any]] = {}
        self._leases_lock = threading.Lock()

    @classmethod
    def configure(cls, **poolkit_options: Any) -> type[PoolkitPool]:
        """A subclass whose pools get these :class:`poolkit.Pool` options (for ``poolclass=``)."""
        return type(cls.__name__, (cls,), {"_defaults": {**cls._defaults, **poolkit_options}})

    @staticmethod
    def _close_record(record: Any) -> None:
        record.close()

    def _do_get(self) -> Any:
        try:
            lease = self.poolkit.acquire()
        except PoolTimeout as exc:
            cause = exc.__cause__
            if cause is not None and self.poolkit.stats().size == 0:
                raise cause from exc  # the database refused us: show its error, as QueuePool does
            raise _sa_exc.TimeoutError(
                f"PoolkitPool limit of size {self._pool_size} overflow {self._max_overflow} "
                f"reached, connection timed out, timeout {self._timeout:.2f} ({exc})",
                code="3o7r",
            ) from exc
        record = lease.resource
        with self._leases_lock:
            self._leases[id(record)] = lease
        return record

    def _do_return_conn(self, record: Any) -> None:
        with self._leases_lock:
            lease = self._leases.pop(id(record), None)
        if lease is None:  # not ours (a pool that was recreated meanwhile): just close it
            record.close()
            return
        lease.release()

    def recreate(self) -> PoolkitPool:
        """A fresh pool with the same settings (``engine.dispose()``); this one is closed."""
        self.logger.info("Pool recreating")
        self.poolkit.close(timeout=0)
        return self.__class__(
            self._creator,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            timeout=self._timeout,
            use_lifo=self._use_lifo,
            poolkit_options=self._options,
            pre_ping=self._pre_ping,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def dispose(self) -> None:
        """Close every idle connection (checked-out ones are closed when returned)."""
        self.poolkit.close_idle()

    def stats(self) -> PoolStats:
        """poolkit's counters for this pool."""
        return self.poolkit.stats()

    def size(self) -> int:
        """The configured ``pool_size``."""
        return self._pool_size

    def checkedin(self) -> int:
        """Idle connections."""
        return self.poolkit.stats().idle

    def checkedout(self) -> int:
        """Connections lent out."""
        return self.poolkit.stats().in_use

    def overflow(self) -> int:
        """Connections beyond ``pool_size``."""
        return max(0, self.poolkit.stats().size - self._pool_size)

    def timeout(self) -> float:
        """Seconds a checkout waits."""
        return self._timeout

    def status(self) -> str:
        """One line, like ``QueuePool.status()``."""
        s = self.poolkit.stats()
        return (
            f"PoolkitPool size: {self._pool_size}  Connections in pool: {s.idle} "
            f"Current Overflow: {self.overflow()} Current Checked out connections: {s.in_use}"
        )
