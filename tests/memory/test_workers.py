"""WorkerPool: an Executor lending each task a pooled resource; order, errors, back-pressure."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, wait

import pytest

from poolkit import Pool, PoolClosed, PoolFull
from poolkit.workers import WorkerPool, WorkerPoolStats

WAIT = 30.0  # generous timeout for events that must happen


class Res:
    """A resource that knows whether two tasks use it at once."""

    ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.busy = False
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool() -> Iterator[Pool[Res]]:
    with Pool(Res, destroy=Res.close, max_size=4, acquire_timeout=WAIT) as p:
        yield p


def check_invariants(s: WorkerPoolStats) -> None:
    assert s.submitted == s.completed + s.failed + s.cancelled + s.queued + s.running


def test_submit_passes_a_borrowed_resource_and_returns_it(pool: Pool[Res]) -> None:
    with WorkerPool(pool) as ex:
        fut = ex.submit(lambda r, a, b=0: (r.id, a + b), 2, b=3)
        rid, total = fut.result(WAIT)
    assert total == 5
    assert rid >= 1
    s = pool.stats()
    assert s.in_use == 0
    assert s.acquired_total == 1
    assert s.idle == 1
    st = ex.stats()
    assert (st.submitted, st.completed, st.failed) == (1, 1, 0)
    check_invariants(st)


def test_map_keeps_input_order_when_tasks_finish_out_of_order(pool: Pool[Res]) -> None:
    last_done = threading.Event()

    def task(r: Res, i: int) -> int:
        if i == 0:
            assert last_done.wait(WAIT)  # the first item finishes last
        if i == 3:
            last_done.set()
        return i * 10

    with WorkerPool(pool, max_workers=4) as ex:
        assert list(ex.map(task, range(4))) == [0, 10, 20, 30]
        assert list(ex.map(lambda r, a, b: a * b, [1, 2, 3], [4, 5])) == [4, 10]


def test_map_is_lazy_and_bounded(pool: Pool[Res]) -> None:
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    with WorkerPool(pool, max_workers=2, max_queued=3) as ex:
        results = ex.map(lambda r, i: i, items())
        assert pulled <= 5 + 1
        assert next(results) == 0
        assert sum(results) == sum(range(1, 10_000))


def test_map_closed_early_cancels_what_has_not_started(pool: Pool[Res]) -> None:
    gate = threading.Event()
    with WorkerPool(pool, max_workers=1, max_queued=4) as ex:

        def task(r: Res, i: int) -> int:
            assert gate.wait(WAIT)
            return i

        results = ex.map(task, range(5))
        gate.set()
        assert next(results) == 0
        results.close()  # type: ignore[attr-defined]
    s = ex.stats()
    assert s.completed + s.cancelled == 5
    check_invariants(s)


def test_map_timeout(pool: Pool[Res]) -> None:
    gate = threading.Event()
    with WorkerPool(pool, max_workers=1) as ex:
        results = ex.map(lambda r, i: gate.wait(WAIT), range(2), timeout=0.01)
        with pytest.raises(TimeoutError):
            next(results)
        gate.set()


def test_a_failing_task_returns_its_resource(pool: Pool[Res]) -> None:
    with WorkerPool(pool, max_workers=1) as ex:
        first = ex.submit(lambda r: r.id).result(WAIT)

        def boom(r: Res) -> None:
            raise ValueError(f"bad input for {r.id}")

        fut = ex.submit(boom)
        with pytest.raises(ValueError, match=f"bad input for {first}"):
            fut.result(WAIT)
        assert ex.submit(lambda r: r.id).result(WAIT) == first  # same resource, kept
    s = pool.stats()
    assert (s.in_use, s.destroyed_total, s.size) == (0, 0, 1)
    assert ex.stats().failed == 1


def test_a_broken_resource_is_destroyed_not_returned(pool: Pool[Res]) -> None:
    seen: list[Res] = []

    def broken(r: Res) -> None:
        seen.append(r)
        raise ConnectionResetError("peer reset")

    with WorkerPool(pool, max_workers=1) as ex:
        with pytest.raises(ConnectionResetError):
            ex.submit(broken).result(WAIT)
        other = ex.submit(lambda r: r).result(WAIT)
    assert seen[0].closed
    assert other is not seen[0]
    s = pool.stats()
    assert s.closed_broken_total == 1
    assert s.in_use == 0


def test_custom_is_broken_decides() -> None:
    with Pool(
        Res, destroy=Res.close, is_broken=lambda r, exc: isinstance(exc, KeyError), max_size=2
    ) as p:
        with WorkerPool(p) as ex:
            with pytest.raises(KeyError):
                ex.submit(lambda r: {}["x"]).result(WAIT)
            with pytest.raises(OSError):
                ex.submit(lambda r: (_ for _ in ()).throw(OSError("kept"))).result(WAIT)
        assert p.stats().closed_broken_total == 1


def test_tasks_never_share_a_resource_and_workers_are_bounded() -> None:
    with Pool(Res, max_size=2, acquire_timeout=WAIT) as p:
        lock = threading.Lock()
        running = 0
        peak = 0
        errors: list[str] = []

        def task(r: Res, i: int) -> int:
            nonlocal running, peak
            with lock:
                if r.busy:
                    errors.append(f"resource {r.id} lent twice")
                r.busy = True
                running += 1
                peak = max(peak, running)
            total = sum(range(2000))
            with lock:
                running -= 1
                r.busy = False
            return total + i

        with WorkerPool(p, max_workers=6, max_queued=8) as ex:
            results = list(ex.map(task, range(200)))
        assert results == [sum(range(2000)) + i for i in range(200)]
        assert errors == []
        assert peak <= 2
        assert ex.stats().workers <= 6
        assert p.stats().size <= 2


def test_full_queue_raises_pool_full_when_asked(pool: Pool[Res]) -> None:
    started = threading.Event()
    gate = threading.Event()

    def hold(r: Res) -> str:
        started.set()
        assert gate.wait(WAIT)
        return "done"

    ex = WorkerPool(pool, max_workers=1, max_queued=2, when_full="raise")
    try:
        running = ex.submit(hold)
        assert started.wait(WAIT)
        queued = [ex.submit(lambda r: "q") for _ in range(2)]
        with pytest.raises(PoolFull, match=r"max_queued=2"):
            ex.submit(lambda r: "overflow")
        s = ex.stats()
        assert (s.queued, s.running, s.rejected) == (2, 1, 1)
        check_invariants(s)
        gate.set()
        assert running.result(WAIT) == "done"
        assert [f.result(WAIT) for f in queued] == ["q", "q"]
    finally:
        gate.set()
        ex.shutdown()


def test_full_queue_blocks_submit_until_room(pool: Pool[Res]) -> None:
    started = threading.Event()
    gate = threading.Event()
    ex = WorkerPool(pool, max_workers=1, max_queued=1)
    try:
        ex.submit(lambda r: (started.set(), gate.wait(WAIT)))
        assert started.wait(WAIT)
        ex.submit(lambda r: "queued")
        submitted: list[Future[str]] = []
        t = threading.Thread(target=lambda: submitted.append(ex.submit(lambda r: "late")))
        t.start()
        t.join(0.05)
        assert t.is_alive(), "submit should block while the queue is full"
        assert submitted == []
        gate.set()
        t.join(WAIT)
        assert submitted[0].result(WAIT) == "late"
    finally:
        gate.set()
        ex.shutdown()


def test_blocking_submit_gives_up_after_submit_timeout(pool: Pool[Res]) -> None:
    gate = threading.Event()
    started = threading.Event()
    ex = WorkerPool(pool, max_workers=1, max_queued=1, submit_timeout=0.01)
    try:
        ex.submit(lambda r: (started.set(), gate.wait(WAIT)))
        assert started.wait(WAIT)
        ex.submit(lambda r: None)
        with pytest.raises(PoolFull, match="stayed full"):
            ex.submit(lambda r: None)
        assert ex.stats().rejected == 1
    finally:
        gate.set()
        ex.shutdown()


def test_shutdown_waits_for_queued_tasks(pool: Pool[Res]) -> None:
    ex = WorkerPool(pool, max_workers=2, max_queued=50)
    futures = [ex.submit(lambda r, i: i * i, i) for i in range(50)]
    ex.shutdown(wait=True)
    assert [f.result(0) for f in futures] == [i * i for i in range(50)]
    with pytest.raises(RuntimeError, match=r"after .* shut down"):
        ex.submit(lambda r: None)
    assert "shut down" in repr(ex)
    assert pool.stats().in_use == 0


def test_shutdown_cancel_futures_cancels_queued_only(pool: Pool[Res]) -> None:
    started = threading.Event()
    gate = threading.Event()
    ex = WorkerPool(pool, max_workers=1, max_queued=10)
    running = ex.submit(lambda r: (started.set(), gate.wait(WAIT))[1])
    assert started.wait(WAIT)
    queued = [ex.submit(lambda r: "never") for _ in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(CancelledError):
        queued[0].result(0)
    gate.set()
    assert running.result(WAIT) is True
    ex.shutdown(wait=True)
    s = ex.stats()
    assert (s.completed, s.cancelled, s.queued, s.running) == (1, 5, 0, 0)
    check_invariants(s)
    assert pool.stats().in_use == 0


def test_shutdown_wakes_a_blocked_submitter(pool: Pool[Res]) -> None:
    started = threading.Event()
    gate = threading.Event()
    ex = WorkerPool(pool, max_workers=1, max_queued=1)
    ex.submit(lambda r: (started.set(), gate.wait(WAIT)))
    assert started.wait(WAIT)
    ex.submit(lambda r: None)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            ex.submit(lambda r: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    t.join(0.05)
    ex.shutdown(wait=False, cancel_futures=True)
    t.join(WAIT)
    assert not t.is_alive()
    assert len(errors) == 1
    gate.set()
    ex.shutdown()


def test_cancelled_before_start_never_borrows(pool: Pool[Res]) -> None:
    started = threading.Event()
    gate = threading.Event()
    with WorkerPool(pool, max_workers=1) as ex:
        ex.submit(lambda r: (started.set(), gate.wait(WAIT)))
        assert started.wait(WAIT)
        fut = ex.submit(lambda r: "x")
        assert fut.cancel()
        gate.set()
    assert ex.stats().cancelled == 1
    assert pool.stats().acquired_total == 1


def test_a_closed_pool_fails_the_task_not_the_worker() -> None:
    p: Pool[Res] = Pool(Res, max_size=1)
    p.close()
    with WorkerPool(p) as ex:
        with pytest.raises(PoolClosed):
            ex.submit(lambda r: None).result(WAIT)
        assert ex.submit(lambda r: None).exception(WAIT) is not None


def test_close_pool_closes_it_on_shutdown() -> None:
    p: Pool[Res] = Pool(Res, max_size=1)
    with WorkerPool(p, close_pool=True) as ex:
        ex.submit(lambda r: None).result(WAIT)
    assert p.stats().closed
    assert ex.pool is p


def test_32_submitting_threads(pool: Pool[Res]) -> None:
    ex = WorkerPool(pool, max_workers=4, max_queued=8)
    futures: list[Future[int]] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def producer(n: int) -> None:
        start.wait(WAIT)
        for i in range(40):
            f = ex.submit(lambda r, x: x, n * 1000 + i)
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    done, not_done = wait(futures, timeout=WAIT)
    assert not not_done
    assert sorted(f.result() for f in done) == sorted(
        n * 1000 + i for n in range(32) for i in range(40)
    )
    ex.shutdown()
    s = ex.stats()
    assert s.submitted == s.completed == 32 * 40
    check_invariants(s)
    assert pool.stats().in_use == 0


def test_real_sqlite_connections(tmp_path: object) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(":memory:", check_same_thread=False)

    with Pool(connect, destroy=sqlite3.Connection.close, max_size=3) as p:
        with WorkerPool(p) as ex:
            totals = list(
                ex.map(lambda c, n: c.execute("select ?*2", (n,)).fetchone()[0], range(30))
            )
        assert totals == [n * 2 for n in range(30)]
        assert p.stats().created_total <= 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, r"max_workers \(0\) must be an int >= 1"),
        ({"max_queued": 0}, r"max_queued \(0\) must be an int >= 1"),
        ({"when_full": "drop"}, r"when_full \('drop'\) must be 'block' or 'raise'"),
        ({"submit_timeout": -1}, r"submit_timeout \(-1\) must be >= 0 or None"),
    ],
)
def test_bad_configuration_names_the_value(
    pool: Pool[Res], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerPool(pool, **kwargs)  # type: ignore[arg-type]


def test_defaults_follow_the_pool(pool: Pool[Res]) -> None:
    with WorkerPool(pool, name="db-workers") as ex:
        s = ex.stats()
        assert (s.max_workers, s.max_queued, s.name) == (4, 8, "db-workers")
        assert repr(ex) == "<WorkerPool 'db-workers' running workers=0/4 queued=0/8>"
        with pytest.raises(ValueError, match=r"chunksize \(0\)"):
            ex.map(lambda r, i: i, [1], chunksize=0)


def test_usable_from_asyncio_run_in_executor(pool: Pool[Res]) -> None:
    import asyncio

    async def main(ex: WorkerPool[Res]) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(ex, lambda r, x: (r.id, x), "arg")

    with WorkerPool(pool) as ex:
        rid, arg = asyncio.run(main(ex))
    assert rid >= 1
    assert arg == "arg"
    assert pool.stats().in_use == 0


def test_an_executor_dropped_without_shutdown_lets_its_threads_exit(pool: Pool[Res]) -> None:
    import gc

    ex = WorkerPool(pool, max_workers=2, name="dropped-executor")
    assert ex.submit(lambda r: 1).result(WAIT) == 1
    threads = [t for t in threading.enumerate() if t.name.startswith("dropped-executor-")]
    assert threads
    del ex
    gc.collect()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
