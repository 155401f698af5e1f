"""gRPC channel pools: N multiplexed channels to one target, watched and replaced when stuck."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from poolkit.errors import PoolClosed, PoolTimeout

__all__ = ["AsyncChannelPool", "ChannelPool", "ChannelPoolStats"]

S = TypeVar("S")
_READY = grpc.ChannelConnectivity.READY
_IDLE = grpc.ChannelConnectivity.IDLE
_TF = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
_STRATEGIES = ("least_in_flight", "round_robin")
# grpc.aio reports states with its own enum values; map them onto grpc.ChannelConnectivity
_BY_VALUE = {s.value[0]: s for s in grpc.ChannelConnectivity}

Options = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class ChannelPoolStats:
    """A snapshot of a channel pool: sizes, load and counters."""

    name: str
    size: int
    in_flight: int
    waiting: int
    max_concurrent_per_channel: int
    acquired_total: int
    waited_total: int
    timeouts_total: int
    replaced_total: int
    states: tuple[str, ...]


class _Slot:
    """One channel in the pool with its load and connectivity bookkeeping."""

    __slots__ = (
        "channel",
        "in_flight",
        "index",
        "retired",
        "state",
        "stubs",
        "unhealthy_since",
        "watcher",
    )

    def __init__(self, index: int, channel: Any) -> None:
        self.index = index
        self.channel = channel
        self.in_flight = 0
        self.state = _IDLE
        self.unhealthy_since: float | None = None
        self.retired = False
        self.stubs: dict[type, Any] = {}
        self.watcher: Any = None

    def lend(self, stub_class: Any) -> Any:
        """The channel, or the stub of ``stub_class`` on it (made once per channel)."""
        if stub_class is None:
            return self.channel
        stub = self.stubs.get(stub_class)
        if stub is None:
            stub = self.stubs[stub_class] = stub_class(self.channel)
        return stub


class _Settings:
    def __init__(
        self,
        target: str,
        size: int,
        credentials: grpc.ChannelCredentials | None,
        options: Options,
        strategy: str,
        max_concurrent_per_channel: int,
        acquire_timeout: float,
        failure_threshold: float,
        name: str | None,
    ) -> None:
        if not target:
            raise ValueError(f"target ({target!r}) must be a non-empty gRPC target")
        if size < 1:
            raise ValueError(f"size ({size}) must be >= 1")
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy ({strategy!r}) must be one of {_STRATEGIES}")
        if max_concurrent_per_channel < 1:
            raise ValueError(
                f"max_concurrent_per_channel ({max_concurrent_per_channel}) must be >= 1"
            )
        if acquire_timeout < 0:
            raise ValueError(f"acquire_timeout ({acquire_timeout}) must be >= 0")
        if failure_threshold <= 0:
            raise ValueError(f"failure_threshold ({failure_threshold}) must be > 0")
        self.target = target
        self.size = size
        self.credentials = credentials
        # a local subchannel pool per channel: otherwise grpc shares one TCP connection
        # between channels with equal arguments and "N channels" would be one connection
        self.options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self.least = strategy == "least_in_flight"
        self.max_concurrent = max_concurrent_per_channel
        self.acquire_timeout = acquire_timeout
        self.failure_threshold = failure_threshold
        self.name = name or f"grpc:{target}"


class _Picker:
    """The shared selection and replacement policy (no I/O, no locking)."""

    def __init__(self, settings: _Settings, clock: Callable[[], float]) -> None:
        self.s = settings
        self.clock = clock
        self.slots: list[_Slot] = []
        self.rr = itertools.count()
        self.closed = False
        self.acquired_total = 0
        self.waited_total = 0
        self.timeouts_total = 0
        self.replaced_total = 0

    def note_state(self, slot: _Slot, state: grpc.ChannelConnectivity) -> None:
        slot.state = state
        if state is _READY or state is _IDLE:
            slot.unhealthy_since = None
        elif state is _TF and slot.unhealthy_since is None:
            slot.unhealthy_since = self.clock()

    def stuck(self, now: float) -> list[_Slot]:
        """Slots in TRANSIENT_FAILURE for longer than the threshold (to be replaced)."""
        limit = self.s.failure_threshold
        return [
            slot
            for slot in self.slots
            if slot.state is _TF
            and slot.unhealthy_since is not None
            and now - slot.unhealthy_since >= limit
        ]

    def pick(self) -> _Slot | None:
        """A slot with room, preferring healthy channels; None when all are at the bound."""
        slots = self.slots
        bound = self.s.max_concurrent
        best: _Slot | None = None
        if self.s.least:
            best_key = (2, bound)
            for slot in slots:
                n = slot.in_flight
                if n < bound:
                    key = (slot.state is _TF, n)
                    if key < best_key:
                        best, best_key = slot, key
                        if n == 0 and not key[0]:
                            break
        else:
            count = len(slots)
            start = next(self.rr)
            for i in range(count):
                slot = slots[(start + i) % count]
                if slot.in_flight < bound:
                    if slot.state is not _TF:
                        best = slot
                        break
                    if best is None:
                        best = slot
        if best is not None:
            best.in_flight += 1
            self.acquired_total += 1
        return best

    def stats(self, waiting: int) -> ChannelPoolStats:
        return ChannelPoolStats(
            name=self.s.name,
            size=len(self.slots),
            in_flight=sum(s.in_flight for s in self.slots),
            waiting=waiting,
            max_concurrent_per_channel=self.s.max_concurrent,
            acquired_total=self.acquired_total,
            waited_total=self.waited_total,
            timeouts_total=self.timeouts_total,
            replaced_total=self.replaced_total,
            states=tuple(s.state.name for s in self.slots),
        )


class _Borrow(Generic[S]):
    """``with pool.channel():`` / ``with pool.stub(Stub):`` - one borrow of one channel."""

    __slots__ = ("_pool", "_slot", "_stub", "_timeout")

    def __init__(self, pool: ChannelPool, timeout: float | None, stub: Any) -> None:
        self._pool = pool
        self._timeout = timeout
        self._stub = stub
        self._slot: _Slot | None = None

    def __enter__(self) -> S:
        slot = self._slot = self._pool._borrow(self._timeout)
        return slot.lend(self._stub)  # type: ignore[no-any-return]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._return(slot)


class ChannelPool:
    """A pool of ``size`` grpcio channels to one target, shared by many callers at once.

    Channels are multiplexed, so a borrow does not own its channel: up to
    ``max_concurrent_per_channel`` borrowers share one, picked by ``strategy``
    (``"least_in_flight"`` or ``"round_robin"``); when every channel is at the bound,
    borrowers wait up to ``acquire_timeout`` (then :class:`poolkit.PoolTimeout`). Each
    channel's connectivity is watched (``channel.subscribe``); a channel stuck in
    TRANSIENT_FAILURE for ``failure_threshold`` seconds is replaced by a new one (the old
    one closes once its in-flight calls finish), so a restarted server is reached without
    waiting out grpc's reconnect backoff.

    Example::

        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with ChannelPool("127.0.0.1:50051", size=4) as pool:
            with pool.stub(health_pb2_grpc.HealthStub) as stub:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    """

    def __init__(
        self,
        target: str,
        *,
        size: int = 4,
        credentials: grpc.ChannelCredentials | None = None,
        options: Options = (),
        strategy: str = "least_in_flight",
        max_concurrent_per_channel: int = 100,
        acquire_timeout: float = 30.0,
        failure_threshold: float = 5.0,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = _Settings(
            target,
            size,
            credentials,
            options,
            strategy,
            max_concurrent_per_channel,
            acquire_timeout,
            failure_threshold,
            name,
        )
        self._p = _Picker(self._s, clock)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._next_check = 0.0
        self._closers: list[threading.Thread] = []
        self.name = self._s.name
        with self._lock:
            self._p.slots = [self._new_slot(i) for i in range(size)]

    # -- channels ----------------------------------------------------------------------

    def _new_slot(self, index: int) -> _Slot:
        s = self._s
        if s.credentials is None:
            channel = grpc.insecure_channel(s.target, options=s.options)
        else:
            channel = grpc.secure_channel(s.target, s.credentials, options=s.options)
        slot = _Slot(index, channel)

        def on_state(state: grpc.ChannelConnectivity, slot: _Slot = slot) -> None:
            with self._lock:
                if not slot.retired:
                    self._p.note_state(slot, state)

        slot.watcher = on_state
        channel.subscribe(on_state, try_to_connect=True)
        return slot

    @staticmethod
    def _unsubscribe(slot: _Slot) -> None:
        with contextlib.suppress(Exception):
            slot.channel.unsubscribe(slot.watcher)

    @staticmethod
    def _close_channels(slots: list[_Slot]) -> None:
        """Close channels once grpc's connectivity thread let go of them.

        grpcio's polling thread wakes every 0.2 s; closing a channel under it makes that
        thread die with "Cannot monitor channel state: Channel closed!". So: unsubscribe
        (done by the caller), wait (bounded) until the thread stopped, then close.
        """
        deadline = time.monotonic() + 1.0
        for slot in slots:
            state = getattr(slot.channel, "_connectivity_state", None)
            while getattr(state, "polling", False) and time.monotonic() < deadline:
                time.sleep(0.01)
        for slot in slots:
            slot.channel.close()

    def _close_later(self, slot: _Slot) -> None:
        """Close a retired channel off the borrower's path (it may wait up to 0.2 s)."""
        self._unsubscribe(slot)
        thread = threading.Thread(
            target=self._close_channels, args=([slot],), name=f"poolkit-{self.name}-close"
        )
        thread.daemon = True
        self._closers = [t for t in self._closers if t.is_alive()]
        self._closers.append(thread)
        thread.start()

    def _replace_stuck(self, now: float) -> list[_Slot]:
        """Under the lock: swap stuck channels for new ones; return the retired to close."""
        retired = []
        for slot in self._p.stuck(now):
            slot.retired = True
            fresh = self._new_slot(slot.index)
            self._p.slots[slot.index] = fresh
            self._p.replaced_total += 1
            if slot.in_flight == 0:
                retired.append(slot)
        return retired

    # -- borrowing ---------------------------------------------------------------------

    def channel(self, timeout: float | None = None) -> _Borrow[grpc.Channel]:
        """``with pool.channel() as ch:`` borrow a share of a channel for some calls."""
        return _Borrow(self, timeout, None)

    def stub(
        self, stub_class: Callable[[grpc.Channel], S], timeout: float | None = None
    ) -> _Borrow[S]:
        """``with pool.stub(HealthStub) as stub:`` a stub on a borrowed channel (cached)."""
        return _Borrow(self, timeout, stub_class)

    def _borrow(self, timeout: float | None) -> _Slot:
        p = self._p
        to_close: list[_Slot] = []
        with self._lock:
            if p.closed:
                raise PoolClosed(f"channel pool {self.name!r} is closed")
            now = p.clock()
            if now >= self._next_check:
                self._next_check = now + min(self._s.failure_threshold / 4, 1.0)
                to_close = self._replace_stuck(now)
            slot = p.pick()
            if slot is None:
                slot = self._wait(timeout)
        for old in to_close:
            self._close_later(old)
        return slot

    def _wait(self, timeout: float | None) -> _Slot:
        p = self._p
        if timeout is None:
            timeout = self._s.acquire_timeout
        deadline = time.monotonic() + timeout
        p.waited_total += 1
        self._waiting += 1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    p.timeouts_total += 1
                    raise PoolTimeout(
                        f"channel pool {self.name!r}: all {len(p.slots)} channels at "
                        f"max_concurrent_per_channel={self._s.max_concurrent} for {timeout} s",
                        pool=self.name,
                        waited_s=timeout,
                    )
                self._cond.wait(remaining)
                if p.closed:
                    raise PoolClosed(f"channel pool {self.name!r} was closed while waiting")
                slot = p.pick()
                if slot is not None:
                    return slot
        finally:
            self._waiting -= 1

    def _return(self, slot: _Slot) -> None:
        with self._lock:
            slot.in_flight -= 1
            # a replaced channel closes with its last borrow; close() did the pool's own
            close = slot.retired and slot.in_flight == 0 and self._p.slots[slot.index] is not slot
            if self._waiting:
                self._cond.notify()
        if close:
            self._close_later(slot)

    # -- inspection and lifecycle ------------------------------------------------------

    def maintain(self) -> int:
        """Replace channels stuck in TRANSIENT_FAILURE now; returns how many were replaced."""
        with self._lock:
            before = self._p.replaced_total
            to_close = self._replace_stuck(self._p.clock())
            replaced = self._p.replaced_total - before
        for old in to_close:
            self._close_later(old)
        return replaced

    def stats(self) -> ChannelPoolStats:
        """Sizes, in-flight borrows, waiters, counters and each channel's state."""
        with self._lock:
            return self._p.stats(self._waiting)

    def close(self) -> None:
        """Close every channel (in-flight calls are cancelled) and wake waiters."""
        with self._lock:
            if self._p.closed:
                return
            self._p.closed = True
            slots = list(self._p.slots)
            for slot in slots:
                slot.retired = True
            self._cond.notify_all()
        for slot in slots:
            self._unsubscribe(slot)
        self._close_channels(slots)
        for thread in self._closers:
            thread.join(2.0)

    def __enter__(self) -> ChannelPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self._p
        return (
            f"<ChannelPool {self.name!r} channels={len(p.slots)} "
            f"in_flight={sum(s.in_flight for s in p.slots)} waiting={self._waiting}>"
        )


class _AsyncBorrow(Generic[S]):
    """``async with pool.channel():`` / ``async with pool.stub(Stub):``."""

    __slots__ = ("_pool", "_slot", "_stub", "_timeout")

    def __init__(self, pool: AsyncChannelPool, timeout: float | None, stub: Any) -> None:
        self._pool = pool
        self._timeout = timeout
        self._stub = stub
        self._slot: _Slot | None = None

    async def __aenter__(self) -> S:
        slot = self._slot = await self._pool._borrow(self._timeout)
        return slot.lend(self._stub)  # type: ignore[no-any-return]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._return(slot)


class AsyncChannelPool:
    """The ``grpc.aio`` twin of :class:`ChannelPool` (same options and policy).

    Connectivity is watched by one small task per channel (``wait_for_state_change``).
    The pool belongs to the event loop it was first used on.

    Example::

        async with AsyncChannelPool("127.0.0.1:50051", size=4) as pool:
            async with pool.stub(health_pb2_grpc.HealthStub) as stub:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    """

    def __init__(
        self,
        target: str,
        *,
        size: int = 4,
        credentials: grpc.ChannelCredentials | None = None,
        options: Options = (),
        strategy: str = "least_in_flight",
        max_concurrent_per_channel: int = 100,
        acquire_timeout: float = 30.0,
        failure_threshold: float = 5.0,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = _Settings(
            target,
            size,
            credentials,
            options,
            strategy,
            max_concurrent_per_channel,
            acquire_timeout,
            failure_threshold,
            name,
        )
        self._p = _Picker(self._s, clock)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._next_check = 0.0
        self._started = False
        self._closing: set[asyncio.Task[None]] = set()
        self.name = self._s.name

    def _start(self) -> None:
        self._started = True
        self._p.slots = [self._new_slot(i) for i in range(self._s.size)]

    def _new_slot(self, index: int) -> _Slot:
        s = self._s
        if s.credentials is None:
            channel = grpc.aio.insecure_channel(s.target, options=s.options)
        else:
            channel = grpc.aio.secure_channel(s.target, s.credentials, options=s.options)
        slot = _Slot(index, channel)
        slot.watcher = asyncio.get_running_loop().create_task(self._watch(slot))
        return slot

    async def _watch(self, slot: _Slot) -> None:
        channel = slot.channel
        try:
            state = channel.get_state(try_to_connect=True)
            while not slot.retired:
                self._p.note_state(slot, _BY_VALUE.get(state.value[0], _IDLE))
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=False)
        except (asyncio.CancelledError, grpc.aio.UsageError):
            pass

    async def _close_slot(self, slot: _Slot) -> None:
        slot.retired = True
        watcher = slot.watcher
        if watcher is not None:
            watcher.cancel()
        await slot.channel.close()
        if watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _close_later(self, slot: _Slot) -> None:
        task = asyncio.get_running_loop().create_task(self._close_slot(slot))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _replace_stuck(self, now: float) -> int:
        count = 0
        for slot in self._p.stuck(now):
            slot.retired = True
            self._p.slots[slot.index] = self._new_slot(slot.index)
            self._p.replaced_total += 1
            count += 1
            if slot.in_flight == 0:
                self._close_later(slot)
        return count

    def channel(self, timeout: float | None = None) -> _AsyncBorrow[grpc.aio.Channel]:
        """``async with pool.channel() as ch:`` borrow a share of a channel."""
        return _AsyncBorrow(self, timeout, None)

    def stub(
        self, stub_class: Callable[[grpc.aio.Channel], S], timeout: float | None = None
    ) -> _AsyncBorrow[S]:
        """``async with pool.stub(HealthStub) as stub:`` a cached stub on a borrowed channel."""
        return _AsyncBorrow(self, timeout, stub_class)

    async def _borrow(self, timeout: float | None) -> _Slot:
        p = self._p
        if p.closed:
            raise PoolClosed(f"channel pool {self.name!r} is closed")
        if not self._started:
            self._start()
        now = p.clock()
        if now >= self._next_check:
            self._next_check = now + min(self._s.failure_threshold / 4, 1.0)
            self._replace_stuck(now)
        slot = p.pick()
        if slot is not None:
            return slot
        return await self._wait(timeout)

    async def _wait(self, timeout: float | None) -> _Slot:
        p = self._p
        if timeout is None:
            timeout = self._s.acquire_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        p.waited_total += 1
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                p.timeouts_total += 1
                raise PoolTimeout(
                    f"channel pool {self.name!r}: all {len(p.slots)} channels at "
                    f"max_concurrent_per_channel={self._s.max_concurrent} for {timeout} s",
                    pool=self.name,
                    waited_s=timeout,
                ) from None
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if p.closed:
                raise PoolClosed(f"channel pool {self.name!r} was closed while waiting")
            slot = p.pick()
            if slot is not None:
                return slot

    def _return(self, slot: _Slot) -> None:
        slot.in_flight -= 1
        # a replaced channel closes with its last borrow, even after the pool closed
        # (close() only closes the channels still in the pool)
        if slot.retired and slot.in_flight == 0 and self._p.slots[slot.index] is not slot:
            self._close_later(slot)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
                break

    def maintain(self) -> int:
        """Replace channels stuck in TRANSIENT_FAILURE now; returns how many were replaced."""
        if not self._started:
            return 0
        return self._replace_stuck(self._p.clock())

    def stats(self) -> ChannelPoolStats:
        """Sizes, in-flight borrows, waiters, counters and each channel's state."""
        return self._p.stats(sum(1 for f in self._waiters if not f.done()))

    async def close(self) -> None:
        """Close every channel and wake waiters with :class:`poolkit.PoolClosed`."""
        p = self._p
        if p.closed:
            return
        p.closed = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        for slot in list(p.slots):
            await self._close_slot(slot)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> AsyncChannelPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        p = self._p
        return (
            f"<AsyncChannelPool {self.name!r} channels={len(p.slots)} "
            f"in_flight={sum(s.in_flight for s in p.slots)}>"
        )
