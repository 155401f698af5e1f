"""BufferPool: size-classed, memory-bounded pool of writable byte buffers for readinto/recv_into."""

from __future__ import annotations

import ctypes
import sys
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ReleaseError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow

__all__ = ["BufferPool", "BufferPoolStats", "to_arrow"]

KiB = 1024
MiB = 1024 * KiB

# Zeroing: a slice copy from a block of zeros is fastest for small buffers, memset for big ones.
_ZERO_COPY_MAX = 32 * KiB
_ZEROS = memoryview(bytes(_ZERO_COPY_MAX))
memset = ctypes.memset
c_char = ctypes.c_char
getrefcount: Callable[[object], int] = getattr(sys, "getrefcount", lambda obj: 0)


def _calibrate_refs() -> int:
    """Reference count of a bytearray reached the same way ``put`` reaches a returned one."""
    view = memoryview(bytearray(1))[:1]
    base = view.obj
    view.release()
    return getrefcount(base)


# On CPython a returned buffer nobody else references has exactly this many references in put();
# more means someone still holds a slice of the view (or the bytearray): it must not be reused.
_SOLE_REFS: int | None = _calibrate_refs() if hasattr(sys, "getrefcount") else None


@dataclass(frozen=True, slots=True)
class BufferPoolStats:
    """A snapshot of a :class:`BufferPool`'s counters.

    ``gets == news + reuses``; ``oversize`` of the news were larger than the largest class
    and are never pooled. ``puts == kept + dropped_foreign + dropped_in_use + dropped_full``.
    ``evicted`` counts idle buffers released (least recently used first) to stay within the
    bounds; ``cleared_bytes`` counts bytes zeroed by ``clear_on_put``.

    Example::

        s = pool.stats()
        print(f"hit rate {s.hit_rate:.0%}, {s.idle_bytes // 1024} KiB idle")
    """

    name: str
    gets: int
    puts: int
    news: int
    reuses: int
    oversize: int
    kept: int
    dropped_foreign: int
    dropped_in_use: int
    dropped_full: int
    evicted: int
    cleared_bytes: int
    idle_buffers: int
    idle_bytes: int
    max_bytes: int
    max_class_bytes: int
    idle_by_class: tuple[tuple[int, int], ...]

    @property
    def hit_rate(self) -> float:
        """Share of ``get()`` calls served by a reused buffer (0.0 before the first get)."""
        return self.reuses / self.gets if self.gets else 0.0


class _BorrowedBuffer:
    """The context manager returned by :meth:`BufferPool.borrow` (cheaper than a generator)."""

    __slots__ = ("_n", "_pool", "_view")

    def __init__(self, pool: BufferPool, n: int) -> None:
        self._pool = pool
        self._n = n

    def __enter__(self) -> memoryview:
        self._view = view = self._pool.get(self._n)
        return view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        view = self._view
        del self._view
        self._pool.put(view)


class BufferPool:
    """A thread-safe pool of ``bytearray`` buffers in size classes, bounded in bytes.

    ``get(n)`` returns a writable ``memoryview`` of exactly ``n`` bytes over a pooled
    ``bytearray`` of the smallest class ``>= n`` (pass it straight to ``sock.recv_into``,
    ``file.readinto`` or ``io.BufferedIOBase.readinto``); ``put(view)`` gives it back.
    ``put`` releases the view, so using it afterwards raises ``ValueError`` instead of
    reading someone else's data; a buffer still referenced elsewhere (a slice of the view,
    a ``pyarrow.Buffer``) is dropped, never reused. With ``clear_on_put`` (the default) the
    bytes the borrower could touch are zeroed before reuse.

    Size classes are powers of two from 1 KiB to 16 MiB unless ``sizes`` is given; a request
    above the largest class gets a fresh, unpooled buffer. Idle buffers are bounded by
    ``max_class_bytes`` per class and ``max_bytes`` in total; when over, the least recently
    returned idle buffers are released first.

    Example::

        pool = BufferPool(max_bytes=32 * 1024 * 1024)
        with pool.borrow(65536) as view:
            n = sock.recv_into(view)
            handle(view[:n])
    """

    __slots__ = (
        "_class_bytes",
        "_class_index",
        "_clear_on_put",
        "_cleared_bytes",
        "_dropped_foreign",
        "_dropped_full",
        "_dropped_in_use",
        "_evicted",
        "_gets",
        "_idle",
        "_idle_bytes",
        "_idle_ids",
        "_kept",
        "_lock",
        "_max_bytes",
        "_max_class_bytes",
        "_name",
        "_news",
        "_oversize",
        "_puts",
        "_seq",
        "_sizes",
    )

    def __init__(
        self,
        sizes: Sequence[int] | None = None,
        *,
        max_bytes: int = 64 * MiB,
        max_class_bytes: int = 16 * MiB,
        clear_on_put: bool = True,
        name: str | None = None,
    ) -> None:
        if sizes is None:
            sizes = [1 << k for k in range(10, 25)]  # 1 KiB .. 16 MiB
        ordered = sorted(set(sizes))
        if not ordered:
            raise ValueError("sizes ([]) must name at least one buffer size")
        for size in ordered:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"buffer size ({size!r}) must be an int >= 1")
        if max_bytes < 0:
            raise ValueError(f"max_bytes ({max_bytes}) must be >= 0")
        if max_class_bytes < 0:
            raise ValueError(f"max_class_bytes ({max_class_bytes}) must be >= 0")
        self._sizes: tuple[int, ...] = tuple(ordered)
        self._class_index = {size: i for i, size in enumerate(self._sizes)}
        self._max_bytes = max_bytes
        self._max_class_bytes = max_class_bytes
        self._clear_on_put = bool(clear_on_put)
        self._name = name if name is not None else "buffers"
        self._lock = threading.Lock()
        # One deque per class of (return sequence number, buffer); right end = most recent.
        self._idle: list[deque[tuple[int, bytearray]]] = [deque() for _ in self._sizes]
        self._class_bytes = [0] * len(self._sizes)
        self._idle_ids: set[int] = set()
        self._idle_bytes = 0
        self._seq = 0
        self._gets = 0
        self._puts = 0
        self._news = 0
        self._oversize = 0
        self._kept = 0
        self._dropped_foreign = 0
        self._dropped_in_use = 0
        self._dropped_full = 0
        self._evicted = 0
        self._cleared_bytes = 0

    @property
    def name(self) -> str:
        """The pool's name (shown in ``repr`` and stats)."""
        return self._name

    @property
    def sizes(self) -> tuple[int, ...]:
        """The size classes, ascending."""
        return self._sizes

    @property
    def clear_on_put(self) -> bool:
        """Whether returned buffers are zeroed before they can be reused."""
        return self._clear_on_put

    def class_for(self, n: int) -> int | None:
        """The class size a request of ``n`` bytes is served from, or None if above all."""
        i = bisect_left(self._sizes, n)
        return self._sizes[i] if i < len(self._sizes) else None

    def get(self, n: int) -> memoryview:
        """Return a writable ``memoryview`` of exactly ``n`` bytes (format ``"B"``).

        Fresh buffers are zero-filled; reused ones are zero-filled too when ``clear_on_put``
        is on (otherwise they may hold the previous user's bytes).
        """
        if type(n) is not int or n < 0:
            raise ValueError(f"n ({n!r}) must be an int >= 0")
        sizes = self._sizes
        i = bisect_left(sizes, n)
        if i == len(sizes):
            with self._lock:
                self._gets += 1
                self._news += 1
                self._oversize += 1
            return memoryview(bytearray(n))
        idle = self._idle[i]
        # acquire()/release() rather than ``with``: measurably cheaper on the hot path.
        lock = self._lock
        lock.acquire()
        try:
            self._gets += 1
            if idle:
                buf = idle.pop()[1]
                self._idle_ids.discard(id(buf))
                size = len(buf)
                self._class_bytes[i] -= size
                self._idle_bytes -= size
            else:
                self._news += 1
                buf = None
        finally:
            lock.release()
        if buf is None:
            buf = bytearray(sizes[i])
        return memoryview(buf) if n == len(buf) else memoryview(buf)[:n]

    def put(self, buf: memoryview | bytearray) -> None:
        """Give back a view from :meth:`get` (or a ``bytearray`` of a class size).

        The view is released. The buffer is dropped, not kept, if its size is no class, if
        it is still referenced elsewhere, or if keeping it would exceed a bound it cannot meet
        by evicting older idle buffers. Raises :class:`poolkit.ReleaseError` on a second put
        of the same view or buffer.
        """
        if type(buf) is memoryview:
            try:
                base = buf.obj
            except ValueError:
                raise ReleaseError(
                    f"memoryview was already returned to BufferPool {self._name!r} "
                    "(it is released); put each view from get() back exactly once"
                ) from None
            used = buf.nbytes
            try:
                buf.release()
            except BufferError:
                # Something (a pyarrow.Buffer, a numpy array, ...) still exports this view.
                self._count_put(in_use=True)
                return
            if type(base) is not bytearray:
                self._count_put(foreign=True)
                return
            if _SOLE_REFS is not None and getrefcount(base) > _SOLE_REFS:
                self._count_put(in_use=True)
                return
            array: bytearray = base
        elif type(buf) is bytearray:
            array = buf
            used = len(buf)
        else:
            raise TypeError(
                f"put() takes a memoryview from get() or a bytearray, not {type(buf).__name__}"
            )
        size = len(array)
        i = self._class_index.get(size)
        if i is None:
            self._count_put(foreign=True)
            return
        if size > self._max_class_bytes or size > self._max_bytes:
            self._count_put(full=True)
            return
        key = id(array)
        if key in self._idle_ids:
            raise ReleaseError(
                f"bytearray of {size} bytes at {key:#x} was put back into BufferPool "
                f"{self._name!r} twice; it is already idle"
            )
        if self._clear_on_put and used:
            if used <= _ZERO_COPY_MAX:
                array[:used] = _ZEROS[:used]
            else:
                memset((c_char * used).from_buffer(array), 0, used)
        else:
            used = 0
        lock = self._lock
        lock.acquire()
        try:
            if key in self._idle_ids:
                raise ReleaseError(
                    f"bytearray of {size} bytes at {key:#x} was put back into BufferPool "
                    f"{self._name!r} twice, concurrently"
                )
            self._puts += 1
            self._kept += 1
            self._cleared_bytes += used
            if (
                self._class_bytes[i] + size > self._max_class_bytes
                or self._idle_bytes + size > self._max_bytes
            ):
                self._make_room(i, size)
            self._seq += 1
            self._idle[i].append((self._seq, array))
            self._idle_ids.add(key)
            self._class_bytes[i] += size
            self._idle_bytes += size
        finally:
            lock.release()

    def _make_room(self, i: int, size: int) -> None:
        # Caller holds the lock; size fits both bounds on its own.
        while self._class_bytes[i] + size > self._max_class_bytes:
            self._evict_from(i)
        while self._idle_bytes + size > self._max_bytes:
            self._evict_lru()

    def _count_put(
        self, *, foreign: bool = False, in_use: bool = False, full: bool = False
    ) -> None:
        with self._lock:
            self._puts += 1
            self._dropped_foreign += foreign
            self._dropped_in_use += in_use
            self._dropped_full += full

    def _evict_from(self, i: int) -> None:
        # Caller holds the lock and knows class i has idle bytes.
        buf = self._idle[i].popleft()[1]
        self._idle_ids.discard(id(buf))
        size = self._sizes[i]
        self._class_bytes[i] -= size
        self._idle_bytes -= size
        self._evicted += 1

    def _evict_lru(self) -> None:
        # Caller holds the lock and knows some class has idle bytes: O(number of classes).
        oldest_i = -1
        oldest_seq = 0
        for i, idle in enumerate(self._idle):
            if idle and (oldest_i < 0 or idle[0][0] < oldest_seq):
                oldest_i, oldest_seq = i, idle[0][0]
        self._evict_from(oldest_i)

    def borrow(self, n: int) -> _BorrowedBuffer:
        """Lend a view of ``n`` bytes for the ``with`` block and put it back afterwards."""
        return _BorrowedBuffer(self, n)

    def clear(self) -> int:
        """Release every idle buffer; return the number of bytes released."""
        with self._lock:
            released = self._idle_bytes
            for i, idle in enumerate(self._idle):
                self._evicted += len(idle)
                idle.clear()
                self._class_bytes[i] = 0
            self._idle_ids.clear()
            self._idle_bytes = 0
        return released

    def trim(self, max_bytes: int) -> int:
        """Release least recently used idle buffers until at most ``max_bytes`` stay idle.

        Returns the number of bytes released. Useful from a periodic task after a burst.
        """
        if max_bytes < 0:
            raise ValueError(f"max_bytes ({max_bytes}) must be >= 0")
        with self._lock:
            before = self._idle_bytes
            while self._idle_bytes > max_bytes:
                self._evict_lru()
            return before - self._idle_bytes

    def stats(self) -> BufferPoolStats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            return BufferPoolStats(
                name=self._name,
                gets=self._gets,
                puts=self._puts,
                news=self._news,
                reuses=self._gets - self._news,
                oversize=self._oversize,
                kept=self._kept,
                dropped_foreign=self._dropped_foreign,
                dropped_in_use=self._dropped_in_use,
                dropped_full=self._dropped_full,
                evicted=self._evicted,
                cleared_bytes=self._cleared_bytes,
                idle_buffers=len(self._idle_ids),
                idle_bytes=self._idle_bytes,
                max_bytes=self._max_bytes,
                max_class_bytes=self._max_class_bytes,
                idle_by_class=tuple(
                    (size, len(idle))
                    for size, idle in zip(self._sizes, self._idle, strict=True)
                    if idle
                ),
            )

    def __repr__(self) -> str:
        return (
            f"<BufferPool {self._name!r} idle={len(self._idle_ids)} buffers "
            f"{self._idle_bytes}/{self._max_bytes} bytes classes={self._sizes[0]}.."
            f"{self._sizes[-1]} clear_on_put={self._clear_on_put}>"
        )


def to_arrow(view: memoryview | bytearray) -> pyarrow.Buffer:
    """Wrap a pooled buffer as a zero-copy ``pyarrow.Buffer`` (needs ``poolkit[arrow]``).

    While the returned buffer (or any array built on it) is alive it pins the memory:
    :meth:`BufferPool.put` then drops the buffer instead of reusing it, so Arrow data never
    changes under you. Drop the Arrow objects before ``put`` to get the buffer reused.

    Example::

        with pool.borrow(n) as view:
            f.readinto(view)
            total = pyarrow.compute.sum(
                pyarrow.Array.from_buffers(pyarrow.int64(), n // 8, [None, to_arrow(view)])
            ).as_py()
    """
    try:
        import pyarrow as pa
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "poolkit.buffers.to_arrow needs pyarrow: pip install 'poolkit[arrow]'"
        ) from exc
    result: Any = pa.py_buffer(view)
    return result
