"""WorkerPool: an Executor whose tasks each borrow a pooled resource; amap: its asyncio twin."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from concurrent.futures import Executor, Future
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

from .errors import PoolFull
from .pool import Pool

__all__ = ["AsyncAcquirer", "MapResults", "WorkerPool", "WorkerPoolStats", "amap"]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class WorkerPoolStats:
    """A snapshot of a :class:`WorkerPool`'s counters.

    ``submitted == completed + failed + cancelled + queued + running``; ``rejected`` counts
    ``submit`` calls refused because the queue stayed full.

    Example::

        s = executor.stats()
        print(f"{s.queued} queued, {s.running} running on {s.workers} threads")
    """

    name: str
    workers: int
    max_workers: int
    queued: int
    max_queued: int
    running: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    rejected: int


class _WorkItem:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class WorkerPool(Executor, Generic[R]):
    """A ``concurrent.futures.Executor`` whose every task runs with a resource from ``pool``.

    ``submit(fn, *args, **kwargs)`` runs ``fn(resource, *args, **kwargs)`` on a worker
    thread with a resource borrowed from the :class:`poolkit.Pool` for that task only. When
    ``fn`` raises, the pool's ``is_broken`` decides whether the resource is destroyed or
    returned; it is never lost. Tasks wait in a bounded queue of ``max_queued`` (default
    twice ``max_workers``): when it is full ``submit`` blocks (``when_full="block"``, up to
    ``submit_timeout`` seconds, None = as long as needed) or raises :class:`poolkit.PoolFull`
    at once (``when_full="raise"``). ``map`` keeps input order and submits lazily, so a long
    iterable never floods the queue. Threads start on demand up to ``max_workers`` (default:
    the pool's ``max_size``). ``shutdown()`` does not close ``pool`` unless ``close_pool``.

    Example::

        pool = poolkit.Pool(lambda: sqlite3.connect("app.db", check_same_thread=False),
                            destroy=lambda c: c.close(), max_size=4)
        with WorkerPool(pool) as ex:
            counts = list(ex.map(lambda conn, t: conn.execute(
                f"select count(*) from {t}").fetchone()[0], ["users", "orders"]))
    """

    def __init__(
        self,
        pool: Pool[R],
        *,
        max_workers: int | None = None,
        max_queued: int | None = None,
        when_full: Literal["block", "raise"] = "block",
        submit_timeout: float | None = None,
        acquire_timeout: float | None = None,
        close_pool: bool = False,
        name: str | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = pool.stats().max_size
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers ({max_workers!r}) must be an int >= 1")
        if max_queued is None:
            max_queued = 2 * max_workers
        if not isinstance(max_queued, int) or isinstance(max_queued, bool) or max_queued < 1:
            raise ValueError(f"max_queued ({max_queued!r}) must be an int >= 1")
        if when_full not in ("block", "raise"):
            raise ValueError(f"when_full ({when_full!r}) must be 'block' or 'raise'")
        if submit_timeout is not None and submit_timeout < 0:
            raise ValueError(f"submit_timeout ({submit_timeout}) must be >= 0 or None")
        self._pool = pool
        self._max_workers = max_workers
        self._max_queued = max_queued
        self._block = when_full == "block"
        self._submit_timeout = submit_timeout
        self._acquire_timeout = acquire_timeout
        self._close_pool = close_pool
        self._name = name if name is not None else f"workers-{pool.name}"
        self._threads: list[threading.Thread] = []
        # Worker threads share only this state (not the executor), so an executor dropped
        # without shutdown() is garbage-collected and its idle threads exit.
        self._state = state = _State()
        weakref.finalize(self, state.stop)

    @property
    def pool(self) -> Pool[R]:
        """The pool the tasks borrow from."""
        return self._pool

    @property
    def name(self) -> str:
        """The executor's name (its threads are named after it)."""
        return self._name

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(resource, *args, **kwargs)`` and return its ``Future``.

        Blocks or raises :class:`poolkit.PoolFull` when the queue is full (see the class
        doc); raises ``RuntimeError`` after :meth:`shutdown`.
        """
        return self._submit(fn, args, kwargs, self._block, self._submit_timeout)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        block: bool,
        timeout: float | None,
    ) -> Future[T]:
        future: Future[T] = Future()
        item = _WorkItem(future, fn, args, kwargs)
        st = self._state
        limit = self._max_queued
        with st.lock:
            if st.shutdown:
                raise RuntimeError(f"cannot schedule new tasks after {self._name!r} shut down")
            if len(st.queue) >= limit:
                if not block:
                    st.rejected += 1
                    raise PoolFull(
                        f"{self._name!r}: task queue is full ({limit} queued, "
                        f"max_queued={limit}); retry later or raise max_queued"
                    )
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(st.queue) >= limit and not st.shutdown:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        st.rejected += 1
                        raise PoolFull(
                            f"{self._name!r}: task queue stayed full ({limit} "
                            f"queued) for {timeout}s; raise max_queued or submit_timeout"
                        )
                    st.blocked_submitters += 1
                    try:
                        st.not_full.wait(remaining)
                    finally:
                        st.blocked_submitters -= 1
                if st.shutdown:
                    raise RuntimeError(f"cannot schedule new tasks after {self._name!r} shut down")
            st.queue.append(item)
            st.submitted += 1
            thread = None
            if st.idle_workers < len(st.queue) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=_work,
                    args=(st, self._pool, self._acquire_timeout),
                    name=f"{self._name}-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
            if st.idle_workers:
                st.not_empty.notify()
        if thread is not None:
            thread.start()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like :meth:`Executor.map` with ``fn(resource, *items)``, results in input order.

        Submits lazily, at most ``max_workers + max_queued`` tasks ahead of the consumer,
        always blocking on a full queue. ``timeout`` counts from this call. Closing the
        iterator early, or an error, cancels the tasks not yet started.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize ({chunksize}) must be >= 1")
        deadline = None if timeout is None else time.monotonic() + timeout
        args_iter = zip(*iterables)  # noqa: B905 - stops at the shortest, like Executor.map
        window = self._max_workers + self._max_queued
        pending: deque[Future[T]] = deque(
            self._submit(fn, args, {}, True, None) for args in itertools.islice(args_iter, window)
        )
        return self._results(pending, args_iter, fn, deadline)

    def _results(
        self,
        pending: deque[Future[T]],
        args_iter: Iterator[tuple[Any, ...]],
        fn: Callable[..., T],
        deadline: float | None,
    ) -> Generator[T, None, None]:
        try:
            while pending:
                future = pending.popleft()
                for args in itertools.islice(args_iter, 1):
                    pending.append(self._submit(fn, args, {}, True, None))
                if deadline is None:
                    yield future.result()
                else:
                    yield future.result(deadline - time.monotonic())
                del future
        finally:
            for future in pending:
                future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with ``cancel_futures`` cancel the queued ones.

        Queued tasks still run otherwise. ``wait=True`` waits for the worker threads to
        finish; the pool is closed afterwards only when ``close_pool`` was given.
        """
        st = self._state
        dropped = st.stop(cancel_futures)
        for item in dropped:
            if item.future.cancel():
                with st.lock:
                    st.cancelled += 1
        if wait:
            for thread in list(self._threads):
                if thread is not threading.current_thread():
                    thread.join()
        if self._close_pool:
            self._pool.close()

    def stats(self) -> WorkerPoolStats:
        """Return a consistent snapshot of the counters."""
        st = self._state
        with st.lock:
            return WorkerPoolStats(
                name=self._name,
                workers=len(self._threads),
                max_workers=self._max_workers,
                queued=len(st.queue),
                max_queued=self._max_queued,
                running=st.running,
                submitted=st.submitted,
                completed=st.completed,
                failed=st.failed,
                cancelled=st.cancelled,
                rejected=st.rejected,
            )

    def __repr__(self) -> str:
        state = "shut down" if self._state.shutdown else "running"
        return (
            f"<WorkerPool {self._name!r} {state} workers={len(self._threads)}/"
            f"{self._max_workers} queued={len(self._state.queue)}/{self._max_queued}>"
        )


class _State:
    """What a WorkerPool shares with its threads: the queue, the lock and the counters."""

    __slots__ = (
        "blocked_submitters",
        "cancelled",
        "completed",
        "failed",
        "idle_workers",
        "lock",
        "not_empty",
        "not_full",
        "queue",
        "rejected",
        "running",
        "shutdown",
        "submitted",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.not_empty = threading.Condition(self.lock)
        self.not_full = threading.Condition(self.lock)
        self.queue: deque[_WorkItem] = deque()
        self.idle_workers = 0
        self.blocked_submitters = 0
        self.shutdown = False
        self.running = 0
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected = 0

    def stop(self, cancel_queued: bool = False) -> list[_WorkItem]:
        """Refuse new tasks and wake everyone; return the queued items removed (to cancel)."""
        with self.lock:
            self.shutdown = True
            dropped: list[_WorkItem] = []
            if cancel_queued:
                dropped = list(self.queue)
                self.queue.clear()
            self.not_empty.notify_all()
            self.not_full.notify_all()
        return dropped


def _work(st: _State, pool: Pool[Any], timeout: float | None) -> None:
    """A worker thread: run queued tasks, each with a borrowed resource, until shut down."""
    outcome = -1  # of the previous task: 0 completed, 1 failed, 2 cancelled, -1 none
    while True:
        with st.lock:
            # Count the previous task here, in the same lock section as the next dequeue.
            if outcome >= 0:
                st.running -= 1
                if outcome == 0:
                    st.completed += 1
                elif outcome == 1:
                    st.failed += 1
                else:
                    st.cancelled += 1
            while not st.queue and not st.shutdown:
                st.idle_workers += 1
                st.not_empty.wait()
                st.idle_workers -= 1
            if not st.queue:
                return
            item = st.queue.popleft()
            if st.blocked_submitters:
                st.not_full.notify()
            st.running += 1
        future = item.future
        outcome = 0
        if not future.set_running_or_notify_cancel():
            outcome = 2
        else:
            try:
                with pool.acquire(timeout) as resource:
                    result = item.fn(resource, *item.args, **item.kwargs)
            except BaseException as exc:
                future.set_exception(exc)
                outcome = 1
                del exc
            else:
                future.set_result(result)
                del result
        del item, future


# -- asyncio -----------------------------------------------------------------------------------


class AsyncAcquirer(Protocol[R_co]):
    """What :func:`amap` needs from a pool: ``async with pool.acquire() as resource``.

    :class:`poolkit.AsyncPool` satisfies it, and so does any object with such an ``acquire``.

    Example::

        class OneClient:                      # an AsyncAcquirer over a single shared client
            def __init__(self, client): self.client = client
            @contextlib.asynccontextmanager
            async def acquire(self):
                yield self.client

        pages = await amap(OneClient(session), fetch, urls, concurrency=4)
    """

    def acquire(self) -> AbstractAsyncContextManager[R_co]:
        """Borrow a resource for an ``async with`` block."""
        ...


class MapResults(Generic[U]):
    """The results of :func:`amap`: iterate with ``async for`` or ``await`` for a list.

    Leaving an ``async with`` block (or ``aclose()``) cancels the tasks still running and
    waits for them, so every borrowed resource is back in its pool.

    Example::

        async with amap(pool, fetch, urls, concurrency=8) as results:
            async for page in results:
                ...
        pages = await amap(pool, fetch, urls, concurrency=8)
    """

    __slots__ = ("_gen",)

    def __init__(self, gen: AsyncGenerator[U, None]) -> None:
        self._gen = gen

    def __aiter__(self) -> MapResults[U]:
        return self

    async def __anext__(self) -> U:
        return await self._gen.__anext__()

    def __await__(self) -> Generator[Any, None, list[U]]:
        return self._collect().__await__()

    async def _collect(self) -> list[U]:
        try:
            return [result async for result in self._gen]
        finally:
            await self._gen.aclose()

    async def aclose(self) -> None:
        """Cancel the tasks still running and wait until their resources are returned."""
        await self._gen.aclose()

    async def __aenter__(self) -> MapResults[U]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._gen.aclose()


def amap(
    pool: AsyncAcquirer[R],
    fn: Callable[[R, T], Awaitable[U]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    concurrency: int,
) -> MapResults[U]:
    """Run ``await fn(resource, item)`` for each item, at most ``concurrency`` at a time.

    Each task borrows its own resource from ``pool`` (an :class:`poolkit.AsyncPool`) for
    the call. Results come in input order; at most ``2 * concurrency`` items are in flight
    (running or finished but waiting for an earlier one), so a slow item holds back memory,
    never the bound. The first error cancels the other tasks, waits for them, and is raised.
    Cancelling the consumer does the same.

    Example::

        rows = await amap(apool, lambda conn, uid: conn.fetchrow(q, uid), ids, concurrency=4)
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency ({concurrency!r}) must be an int >= 1")
    return MapResults(_amap(pool, fn, items, concurrency))


async def _amap(
    pool: AsyncAcquirer[R],
    fn: Callable[[R, T], Awaitable[U]],
    items: Iterable[T] | AsyncIterable[T],
    concurrency: int,
) -> AsyncGenerator[U, None]:
    async def run_one(item: T) -> U:
        async with pool.acquire() as resource:
            return await fn(resource, item)

    sync_items: Iterator[T] | None = None
    async_items: Any = None
    if isinstance(items, AsyncIterable):
        async_items = items.__aiter__()
    else:
        sync_items = iter(items)
    loop = asyncio.get_running_loop()
    window: deque[asyncio.Task[U]] = deque()  # in input order, running or finished
    running = 0
    failed: list[BaseException] = []
    wakeup: asyncio.Future[None] | None = None

    def finished(task: asyncio.Task[U]) -> None:
        nonlocal running
        running -= 1
        error = None if task.cancelled() else task.exception()
        if error is not None and not failed:
            failed.append(error)
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    lookahead = 2 * concurrency
    exhausted = False
    try:
        while True:
            while not exhausted and running < concurrency and len(window) < lookahead:
                if sync_items is not None:
                    try:
                        item = next(sync_items)
                    except StopIteration:
                        exhausted = True
                        break
                else:
                    try:
                        item = await async_items.__anext__()
                    except StopAsyncIteration:
                        exhausted = True
                        break
                task = loop.create_task(run_one(item))
                window.append(task)
                running += 1
                task.add_done_callback(finished)
            if failed:
                raise failed[0]
            if not window:
                return
            head = window[0]
            if head.done():
                window.popleft()
                yield head.result()
                continue
            # Sleep until any task finishes: a slot frees up, or the head may be done.
            wakeup = loop.create_future()
            await wakeup
            wakeup = None
    finally:
        for task in window:
            task.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)
