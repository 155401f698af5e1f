"""ObjectPool: a light, non-blocking, thread-safe pool of reusable objects (like Go's sync.Pool)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, NoReturn, TypeVar

from .errors import ReleaseError

__all__ = ["ObjectPool", "ObjectPoolStats"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ObjectPoolStats:
    """A snapshot of an :class:`ObjectPool`'s counters.

    ``gets == news + reuses`` always holds (``prefilled`` objects are made by ``prefill()``,
    not by a get); ``puts == kept + dropped + reset_errors``, where ``kept`` counts the puts
    whose object went back to the idle list; ``cleared`` counts idle objects dropped by
    ``clear()``.

    Example::

        s = pool.stats()
        print(f"{s.hit_rate:.0%} of gets reused an object; {s.idle} idle")
    """

    name: str
    idle: int
    max_idle: int
    gets: int
    puts: int
    news: int
    reuses: int
    dropped: int
    reset_errors: int
    prefilled: int
    cleared: int

    @property
    def hit_rate(self) -> float:
        """Share of ``get()`` calls served by a reused object (0.0 before the first get)."""
        return self.reuses / self.gets if self.gets else 0.0

    @property
    def kept(self) -> int:
        """Number of ``put()`` calls whose object went back to the idle list."""
        return self.puts - self.dropped - self.reset_errors


class _Borrowed(Generic[T]):
    """The context manager returned by :meth:`ObjectPool.borrow` (cheaper than a generator)."""

    __slots__ = ("_obj", "_pool")

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool

    def __enter__(self) -> T:
        self._obj = obj = self._pool.get()
        return obj

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        obj = self._obj
        del self._obj
        self._pool.put(obj)


class ObjectPool(Generic[T]):
    """A non-blocking pool of reusable objects: ``get()`` never waits, it creates when empty.

    ``new()`` makes an object; ``reset(obj)`` (optional) cleans one on ``put`` before it can
    be handed out again, so idle objects hold no data of their last user. At most
    ``max_idle`` objects are kept; the rest are dropped for the garbage collector. Putting
    an object that is already idle raises :class:`poolkit.ReleaseError`, so one object is
    never handed to two borrowers. Thread-safe: one short lock section per call.

    Example::

        pool = ObjectPool(io.BytesIO, reset=lambda b: (b.seek(0), b.truncate()), max_idle=8)
        with pool.borrow() as buf:
            buf.write(b"hello")
        print(pool.stats().hit_rate)
    """

    __slots__ = (
        "_cleared",
        "_dropped",
        "_gets",
        "_idle",
        "_idle_ids",
        "_lock",
        "_max_idle",
        "_name",
        "_new",
        "_news",
        "_prefilled",
        "_puts",
        "_reset",
        "_reset_errors",
    )

    def __init__(
        self,
        new: Callable[[], T],
        *,
        reset: Callable[[T], object] | None = None,
        max_idle: int = 64,
        name: str | None = None,
    ) -> None:
        if not callable(new):
            raise TypeError(f"new ({new!r}) must be a callable that returns a fresh object")
        if reset is not None and not callable(reset):
            raise TypeError(f"reset ({reset!r}) must be a callable taking the object, or None")
        if not isinstance(max_idle, int) or isinstance(max_idle, bool) or max_idle < 0:
            raise ValueError(f"max_idle ({max_idle!r}) must be an int >= 0")
        self._new = new
        self._reset = reset
        self._max_idle = max_idle
        self._name = name if name is not None else f"objects-{getattr(new, '__name__', 'obj')}"
        self._lock = threading.Lock()
        self._idle: list[T] = []
        self._idle_ids: set[int] = set()
        self._gets = 0
        self._puts = 0
        self._news = 0
        self._dropped = 0
        self._reset_errors = 0
        self._prefilled = 0
        self._cleared = 0

    @property
    def name(self) -> str:
        """The pool's name (shown in ``repr`` and stats)."""
        return self._name

    @property
    def max_idle(self) -> int:
        """The most objects kept idle."""
        return self._max_idle

    def get(self) -> T:
        """Return an idle object (most recently returned first) or a new one; never blocks."""
        # acquire()/release() rather than ``with``: measurably cheaper on the hot path.
        lock = self._lock
        lock.acquire()
        try:
            self._gets += 1
            if self._idle:
                obj = self._idle.pop()
                self._idle_ids.discard(id(obj))
                return obj
            self._news += 1
        finally:
            lock.release()
        return self._new()

    def put(self, obj: T) -> None:
        """Give ``obj`` back: it is reset, then kept if fewer than ``max_idle`` are idle.

        Raises :class:`poolkit.ReleaseError` if ``obj`` is already idle in this pool (a double
        put), leaving the pool unchanged. If ``reset`` raises, the object is dropped and the
        error propagates.
        """
        key = id(obj)
        if key in self._idle_ids:
            self._double_put(obj, key)
        if len(self._idle) >= self._max_idle:
            # Full (checked again under the lock below): skip the reset of a dropped object.
            with self._lock:
                self._puts += 1
                self._dropped += 1
            return
        reset = self._reset
        if reset is not None:
            # Outside the lock. Resetting an object that turns out to be already idle (a double
            # put, refused below) is harmless: idle objects are reset already.
            try:
                reset(obj)
            except BaseException:
                with self._lock:
                    self._puts += 1
                    self._reset_errors += 1
                raise
        lock = self._lock
        lock.acquire()
        try:
            if key in self._idle_ids:
                self._double_put(obj, key)
            self._puts += 1
            if len(self._idle) >= self._max_idle:
                self._dropped += 1
                return
            self._idle.append(obj)
            self._idle_ids.add(key)
        finally:
            lock.release()

    def _double_put(self, obj: T, key: int) -> NoReturn:
        raise ReleaseError(
            f"{type(obj).__name__} object at {key:#x} was put back into ObjectPool "
            f"{self._name!r} twice; it is already idle (borrow with pool.borrow() to "
            "make double puts impossible)"
        )

    def borrow(self) -> _Borrowed[T]:
        """Lend an object for the ``with`` block and put it back afterwards, even on error."""
        return _Borrowed(self)

    def prefill(self, count: int) -> int:
        """Create objects until ``count`` (capped at ``max_idle``) are idle; return how many."""
        if count < 0:
            raise ValueError(f"count ({count}) must be >= 0")
        target = min(count, self._max_idle)
        made = 0
        while True:
            with self._lock:
                if len(self._idle) >= target:
                    return made
            obj = self._new()
            made += 1
            with self._lock:
                self._prefilled += 1
                if len(self._idle) >= target:
                    return made
                self._idle.append(obj)
                self._idle_ids.add(id(obj))

    def clear(self) -> int:
        """Drop every idle object; return how many were dropped."""
        with self._lock:
            count = len(self._idle)
            self._idle.clear()
            self._idle_ids.clear()
            self._cleared += count
        return count

    def stats(self) -> ObjectPoolStats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            return ObjectPoolStats(
                name=self._name,
                idle=len(self._idle),
                max_idle=self._max_idle,
                gets=self._gets,
                puts=self._puts,
                news=self._news,
                reuses=self._gets - self._news,
                dropped=self._dropped,
                reset_errors=self._reset_errors,
                prefilled=self._prefilled,
                cleared=self._cleared,
            )

    def __len__(self) -> int:
        """Number of idle objects."""
        return len(self._idle)

    def __repr__(self) -> str:
        return (
            f"<ObjectPool {self._name!r} idle={len(self._idle)}/{self._max_idle} "
            f"gets={self._gets} news={self._news}>"
        )
