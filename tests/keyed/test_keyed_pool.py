"""KeyedPool: per-key sub-pools, the global cap with LRU eviction, FIFO fairness, sweeping."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from poolkit import PoolClosed, PoolTimeout
from poolkit.keyed import KeyedFactory, KeyedPool


class Res:
    """A resource that knows its key and whether it was destroyed."""

    _ids = iter(range(1, 10**9))

    def __init__(self, key: object) -> None:
        self.key = key
        self.id = next(self._ids)
        self.closed = False

    def __repr__(self) -> str:
        return f"Res({self.key!r}#{self.id})"


class Tracker:
    """create/destroy hooks that count live resources per key and overall."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: Counter[object] = Counter()
        self.total = 0
        self.max_total = 0
        self.max_per_key = 0
        self.created: list[Res] = []
        self.destroyed: list[Res] = []

    def create(self, key: object) -> Res:
        r = Res(key)
        with self.lock:
            self.live[key] += 1
            self.total += 1
            self.max_total = max(self.max_total, self.total)
            self.max_per_key = max(self.max_per_key, self.live[key])
            self.created.append(r)
        return r

    def destroy(self, r: Res) -> None:
        assert not r.closed, f"{r} destroyed twice"
        r.closed = True
        with self.lock:
            self.live[r.key] -= 1
            self.total -= 1
            self.destroyed.append(r)


def make_pool(t: Tracker, **kw: object) -> KeyedPool[str, Res]:
    kw.setdefault("acquire_timeout", 5.0)
    return KeyedPool(t.create, destroy=t.destroy, **kw)  # type: ignore[arg-type]


def test_one_subpool_per_key_and_stats() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=3, name="tenants") as pool:
        with pool.acquire("a") as ra, pool.acquire("b") as rb:
            assert ra.key == "a" and rb.key == "b"
            s = pool.stats()
            assert s.keys == 2 and s.in_use == 2 and s.size == 2
            assert s.per_key["a"].in_use == 1
        with pool.acquire("a") as ra2:
            assert ra2 is ra  # reused within its key
        lease = pool.get("b")
        assert lease.resource is rb
        lease.release()
        s = pool.stats()
        assert s.idle == 2 and s.acquired_total == 4 and s.created_total == 2
        assert sorted(pool.keys()) == ["a", "b"]
        assert "tenants" in repr(pool) and "keys=2" in repr(pool)
        assert s.as_dict()["per_key"]["a"]["size"] == 1
    assert pool.closed
    assert t.total == 0
    with pytest.raises(PoolClosed):
        pool.get("a")


def test_max_per_key_bounds_each_key() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=2) as pool:
        l1, l2 = pool.get("a"), pool.get("a")
        with pytest.raises(PoolTimeout):
            pool.get("a", timeout=0.05)
        other = pool.get("b", timeout=1.0)  # another key is not blocked
        for lease in (l1, l2, other):
            lease.release()
    assert t.max_per_key == 2


def test_max_total_closes_lru_idle_resource_of_another_key() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=4, max_total=2) as pool:
        with pool.acquire("a") as ra:
            pass
        with pool.acquire("b") as rb:
            pass
        # both permits are held by idle resources; "a" is the least recently used
        with pool.acquire("c", timeout=2.0) as rc:
            assert rc.key == "c"
            assert ra.closed and not rb.closed
        s = pool.stats()
        assert s.evictions_total == 1 and s.size == 2 and s.permits_in_use == 2
    assert t.max_total == 2


def test_no_deadlock_when_every_key_holds_idle_resources() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=2, max_total=3) as pool:
        for i in range(30):
            with pool.acquire(f"k{i}", timeout=2.0) as r:
                assert r.key == f"k{i}"
        assert pool.stats().size <= 3
        assert pool.stats().evictions_total >= 27
    assert t.max_total == 3


def test_timeout_when_every_permit_is_in_use_names_the_cap() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=2, max_total=2) as pool:
        l1, l2 = pool.get("a"), pool.get("b")
        with pytest.raises(PoolTimeout) as info:
            pool.get("c", timeout=0.2)
        assert "max_total (2)" in str(info.value.__cause__) or "max_total (2)" in str(info.value)
        l1.release()
        l2.release()
        # the cap frees up once a resource goes idle: "c" now gets one
        with pool.acquire("c", timeout=2.0) as rc:
            assert rc.key == "c"


def test_freed_permit_serves_oldest_waiter_of_any_key() -> None:
    t = Tracker()
    served: list[str] = []
    with make_pool(t, max_per_key=1, max_total=1) as pool:
        holder = pool.get("a")
        started = threading.Event()

        def borrow(key: str) -> None:
            with pool.acquire(key, timeout=10.0):
                served.append(key)

        threads = []
        for key in ("b", "c", "d"):
            th = threading.Thread(target=borrow, args=(key,))
            th.start()
            threads.append(th)
            # wait until this borrower is queued for a permit before starting the next
            deadline = time.monotonic() + 5
            while pool.stats().budget_waiting < len(threads) and time.monotonic() < deadline:
                started.wait(0.005)
        assert pool.stats().budget_waiting == 3
        holder.release()
        for th in threads:
            th.join(10)
        assert served == ["b", "c", "d"]
    assert t.max_total == 1


def test_sweep_closes_subpools_empty_for_idle_timeout() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=2, idle_timeout=60.0) as pool:
        with pool.acquire("a"):
            pass
        with pool.acquire("b"):
            pass
        now = time.monotonic()
        assert pool.sweep(now) == 0  # "a" and "b" still hold an idle resource
        pool.close_idle("a")
        assert pool.sweep(now) == 0  # empty from now on
        assert pool.sweep(now + 59.0) == 0
        assert pool.sweep(now + 61.0) == 1
        assert pool.keys() == ["b"]
        assert pool.stats().subpools_closed_total == 1
        with pool.acquire("a") as r:  # comes back lazily
            assert r.key == "a"


def test_discard_fails_waiters_and_next_borrow_starts_afresh() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=1) as pool:
        lease = pool.get("a")
        errors: list[BaseException] = []

        def wait_for_a() -> None:
            try:
                pool.pool_for("a").get(timeout=10.0).release()
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=wait_for_a)
        th.start()
        deadline = time.monotonic() + 5
        while pool.stats().waiting == 0 and time.monotonic() < deadline:
            th.join(0.005)
        assert pool.discard("a", timeout=0.0)
        th.join(10)
        assert len(errors) == 1 and isinstance(errors[0], PoolClosed)
        assert not pool.discard("a")
        lease.release()  # released after discard: destroyed quietly
        assert lease.resource.closed
        with pool.acquire("a") as r:
            assert r is not lease.resource


def test_keyed_factory_hooks_and_for_key() -> None:
    calls: list[tuple[str, object]] = []

    class Conns(KeyedFactory[str, Res]):
        def create(self, key: str) -> Res:
            calls.append(("create", key))
            return Res(key)

        def destroy(self, resource: Res) -> None:
            calls.append(("destroy", resource.key))

        def reset(self, resource: Res) -> None:
            calls.append(("reset", resource.key))

    with KeyedPool(Conns(), max_per_key=2) as pool:
        with pool.acquire("x"):
            pass
        bound = pool.pool_for("x")
        assert "x" in bound.name
    assert calls == [("create", "x"), ("reset", "x"), ("destroy", "x")]


def test_keyword_hook_overrides_factory_hook() -> None:
    seen: list[str] = []

    class Conns(KeyedFactory[str, Res]):
        def create(self, key: str) -> Res:
            return Res(key)

        def destroy(self, resource: Res) -> None:
            seen.append("factory")

    with KeyedPool(Conns(), destroy=lambda r: seen.append("keyword")) as pool:
        with pool.acquire("x"):
            pass
    assert seen == ["keyword"]


def test_broken_resource_frees_its_permit() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=1, max_total=1) as pool:
        with pytest.raises(ConnectionError), pool.acquire("a"):
            raise ConnectionError("lost")
        assert t.total == 0 and pool.stats().permits_in_use == 0
        with pool.acquire("b", timeout=1.0) as r:
            assert r.key == "b"


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"max_per_key": 0}, ValueError, r"max_per_key \(0\) must be >= 1"),
        ({"max_total": 0}, ValueError, r"max_total \(0\) must be >= 1"),
        ({"idle_timeout": 0}, ValueError, r"idle_timeout \(0\) must be > 0"),
        ({"max_size": 3}, TypeError, r"does not take max_size="),
        ({"budget": object()}, TypeError, r"does not take budget="),
        ({"acquire_timeout": -1}, ValueError, r"acquire_timeout \(-1\)"),
        ({"no_such_option": 1}, TypeError, r"no_such_option"),
    ],
)
def test_bad_configuration_names_value(kwargs: dict, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        KeyedPool(Res, **kwargs)


def test_create_must_be_callable() -> None:
    with pytest.raises(TypeError, match="create must be a callable create"):
        KeyedPool(42)  # type: ignore[arg-type]


def test_key_reprs_hide_passwords() -> None:
    with KeyedPool(Res, name="dsns") as pool:
        with pool.acquire("postgresql://app:s3cret@db1/app"):
            pass
        names = [s.name for s in pool.stats().per_key.values()]
        assert names == ["dsns[postgresql://app:***@db1/app]"]
        assert "s3cret" not in repr(pool.pool_for("postgresql://app:s3cret@db1/app"))


def test_thread_stress_caps_hold_and_everyone_is_served() -> None:
    t = Tracker()
    rng = random.Random(1)
    keys = [f"k{i}" for i in range(12)]
    per_thread = 150
    done = Counter[int]()
    failures: list[BaseException] = []
    with make_pool(t, max_per_key=3, max_total=8, acquire_timeout=20.0) as pool:

        def worker(n: int) -> None:
            local = random.Random(n)
            try:
                for _ in range(per_thread):
                    key = local.choice(keys)
                    with pool.acquire(key) as r:
                        assert r.key == key and not r.closed
                        if local.random() < 0.05:
                            time.sleep(0.001)
                    done[n] += 1
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(rng.randrange(10**6),)) for _ in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not failures, failures[:3]
        assert sum(done.values()) == 16 * per_thread
        s = pool.stats()
        assert s.size <= 8 and s.permits_in_use == s.size + s.creating
        assert s.budget_waiting == 0 and s.in_use == 0
    assert t.max_total <= 8
    assert t.max_per_key <= 3
    assert t.total == 0


def test_busy_key_cannot_starve_another_key() -> None:
    """Key "b" always has waiters, so its resources never go idle; "a" still gets a slot."""
    t = Tracker()
    a_served = threading.Event()
    failures: list[BaseException] = []
    with make_pool(t, max_per_key=2, max_total=2, acquire_timeout=10.0) as pool:

        def hammer_b() -> None:
            try:
                for _ in range(20000):
                    if a_served.is_set():
                        return
                    with pool.acquire("b"):
                        a_served.wait(0.001)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=hammer_b) for _ in range(4)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = pool.stats().per_key.get("b")
            if s is not None and s.size == 2 and s.waiting > 0:
                break
            a_served.wait(0.005)
        with pool.acquire("a", timeout=10.0) as ra:
            assert ra.key == "a"
        a_served.set()
        for th in threads:
            th.join(10)
    assert not failures, failures[:3]
    assert t.max_total <= 2


def test_timeout_at_the_key_limit_does_not_blame_the_cap() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=1, max_total=2) as pool:
        held = [pool.get("a"), pool.get("b")]
        with pytest.raises(PoolTimeout) as info:
            pool.get("a", timeout=0.05)  # "a" is at max_per_key: the cap is not the reason
        assert "max_total" not in str(info.value)
        for lease in held:
            lease.release()


def test_resize_limits_at_run_time() -> None:
    t = Tracker()
    with make_pool(t, max_per_key=2, max_total=4) as pool:
        for key in "abcd":
            with pool.acquire(key):
                pass
        held = pool.get("a")
        pool.resize(max_total=2)  # two idle resources of other keys close, LRU first
        s = pool.stats()
        assert s.size == 2 and s.max_total == 2 and s.permits_in_use == 2
        assert [r.key for r in t.destroyed] == ["b", "c"]
        pool.resize(max_per_key=1)
        with pytest.raises(PoolTimeout):
            pool.get("a", timeout=0.05)  # "a" is at its new per-key limit
        held.release()
        pool.resize(max_total=3)
        with pool.acquire("e", timeout=2.0), pool.acquire("f", timeout=2.0):
            assert pool.stats().size <= 3
        with pytest.raises(ValueError, match=r"max_per_key \(0\) must be >= 1"):
            pool.resize(max_per_key=0)
    with make_pool(Tracker()) as uncapped:
        with pytest.raises(ValueError, match="built without one"):
            uncapped.resize(max_total=5)
