"""EndpointPool over in-process fake servers: balancing, ejection, half-open probes, membership."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from poolkit import PoolClosed, PoolTimeout, ReleaseError
from poolkit.endpoints import Endpoint, EndpointPool
from poolkit.keyed import KeyedFactory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Conn:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.closed = False


class Server:
    """A fake replica: ``up`` controls whether connecting works."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.healthy_checks = True
        self.connects = 0
        self.lock = threading.Lock()

    def connect(self) -> Conn:
        with self.lock:
            self.connects += 1
        if not self.up:
            raise ConnectionRefusedError(f"connect to {self.name} refused (password=hunter2)")
        return Conn(self)


def connect(server: Server) -> Conn:
    return server.connect()


def close(conn: Conn) -> None:
    conn.closed = True


def make(
    servers: list[Server], clock: Clock | None = None, **kw: Any
) -> EndpointPool[Server, Conn]:
    kw.setdefault("acquire_timeout", 5.0)
    kw.setdefault("failure_threshold", 2)
    return EndpointPool(
        connect,
        [Endpoint(s, name=s.name) for s in servers],
        destroy=close,
        clock=clock,
        **kw,
    )


def test_round_robin_spreads_borrows_and_stats() -> None:
    servers = [Server(f"db{i}") for i in range(3)]
    with make(servers, name="replicas") as pool:
        leases = [pool.get() for _ in range(6)]
        assert [lease.endpoint.name for lease in leases] == ["db0", "db1", "db2"] * 2
        assert all(lease.resource.server.name == lease.endpoint.name for lease in leases)
        s = pool.stats()
        assert s.healthy == 3 and s.in_use == 6 and s.size == 6
        assert [e.in_use for e in s.endpoints] == [2, 2, 2]
        for lease in leases:
            lease.release()
        s = pool.stats()
        assert s.in_use == 0 and s.idle == 6 and s.acquired_total == 6
        assert "db1:healthy" in repr(pool)
        assert s.as_dict()["endpoints"][0]["name"] == "db0"
    with pytest.raises(PoolClosed):
        pool.get()


def test_dead_endpoint_is_ejected_and_borrowers_fail_over() -> None:
    clock = Clock()
    a, b = Server("a"), Server("b")
    b.up = False
    with make([a, b], clock, base_backoff=10.0) as pool:
        for _ in range(10):
            with pool.acquire() as conn:  # never fails: b's waiters move to a
                assert conn.server is a
        s = pool.stats()
        eb = s.endpoints[1]
        assert eb.state == "ejected" and eb.ejections_total == 1
        assert eb.errors_total >= 2
        assert eb.last_error is not None and "ConnectionRefusedError" in eb.last_error
        assert "hunter2" not in eb.last_error and "password=***" in eb.last_error
        assert eb.ejected_for_s == 10.0
        assert s.failovers_total >= 1
        before = b.connects
        for _ in range(10):
            with pool.acquire():
                pass
        assert b.connects == before  # no traffic, not even connection attempts, while ejected


def test_half_open_probe_rejoins_or_backs_off_further() -> None:
    clock = Clock()
    a, b = Server("a"), Server("b")
    with make([a, b], clock, base_backoff=2.0, max_backoff=60.0) as pool:
        b.up = False
        while pool.stats().endpoints[1].state != "ejected":
            with pool.acquire():
                pass
        assert pool.probe() == []  # not due yet
        clock.now += 2.0
        before = b.connects
        assert pool.probe() == []  # still down: one trial connection, ejected for longer
        assert b.connects == before + 1
        eb = pool.stats().endpoints[1]
        assert eb.state == "ejected" and eb.ejected_for_s == 4.0 and eb.ejections_total == 1
        b.up = True
        clock.now += 4.0
        assert [e.name for e in pool.probe()] == ["b"]
        assert pool.stats().endpoints[1].state == "healthy"
        names = Counter(pool.get().endpoint.name for _ in range(4))
        assert names == {"a": 2, "b": 2}


def test_probe_runs_in_background_on_borrow() -> None:
    clock = Clock()
    a, b = Server("a"), Server("b")
    rejoined = threading.Event()
    with make([a, b], clock, base_backoff=1.0) as pool:
        b.up = False
        while pool.stats().endpoints[1].state != "ejected":
            with pool.acquire():
                pass
        b.up = True
        clock.now += 1.0
        with pool.acquire():  # starts the probe; this borrow goes to a
            pass
        for _ in range(500):
            if pool.stats().endpoints[1].state == "healthy":
                rejoined.set()
                break
            rejoined.wait(0.01)
        assert rejoined.is_set()


def test_all_down_fails_fast_naming_each_endpoint() -> None:
    clock = Clock()
    servers = [Server("a"), Server("b")]
    for s in servers:
        s.up = False
    pool = EndpointPool(
        connect,
        [Endpoint(s, name=f"postgresql://app:s3cret@{s.name}/app") for s in servers],
        failure_threshold=1,
        acquire_timeout=5.0,
        clock=clock,
    )
    with pool:
        with pytest.raises(PoolTimeout) as info:
            for _ in range(5):
                pool.get()
        message = str(info.value)
        assert "no endpoint is available" in message
        assert "postgresql://app:***@a/app (ejected, next probe in 1.0s)" in message
        assert "postgresql://app:***@b/app (ejected" in message
        assert "ConnectionRefusedError" in message
        assert "s3cret" not in message and "hunter2" not in message
        assert "s3cret" not in repr(pool) and "s3cret" not in str(pool.stats())


def test_primary_first_fails_over_and_returns() -> None:
    clock = Clock()
    p, r1, r2 = Server("primary"), Server("r1"), Server("r2")
    with make([p, r1, r2], clock, strategy="primary_first", base_backoff=1.0) as pool:
        assert {pool.get().endpoint.name for _ in range(3)} == {"primary"}
        p.up = False
        # idle connections to the primary still exist; new ones fail and it gets ejected
        pool._keyed.close_idle()
        with pool.acquire() as conn:
            assert conn.server is r1
        assert pool.stats().endpoints[0].state == "ejected"
        p.up = True
        clock.now += 1.0
        pool.probe()
        with pool.acquire() as conn:
            assert conn.server is p


def test_weighted_strategy_follows_weights() -> None:
    a, b = Server("a"), Server("b")
    pool = EndpointPool(connect, [Endpoint(a, 3, "a"), Endpoint(b, 1, "b")], strategy="weighted")
    with pool:
        picks = Counter()
        for _ in range(40):
            with pool.acquire() as conn:
                picks[conn.server.name] += 1
        assert picks == {"a": 30, "b": 10}


def test_least_in_use_and_two_choices_avoid_busy_endpoint() -> None:
    for strategy in ("least_in_use", "random_two_choices"):
        servers = [Server("a"), Server("b")]
        with make(servers, strategy=strategy) as pool:
            held = [pool.get() for _ in range(4)]
            assert Counter(h.endpoint.name for h in held) == {"a": 2, "b": 2}
            for h in held:
                if h.endpoint.name == "a":
                    h.release()
            with pool.get() as _:
                pass
            lease = pool.get()
            assert lease.endpoint.name == "a"
            lease.release()
            for h in held:
                if h.endpoint.name == "b":
                    h.release()


def test_check_failures_eject_too() -> None:
    clock = Clock()
    a, b = Server("a"), Server("b")
    pool = EndpointPool(
        connect,
        [Endpoint(a, name="a"), Endpoint(b, name="b")],
        check=lambda conn, info: conn.server.healthy_checks,
        check_after_idle=0,
        failure_threshold=2,
        clock=clock,
    )
    with pool:
        for _ in range(4):
            with pool.acquire():
                pass
        b.healthy_checks = False
        for _ in range(8):
            with pool.acquire() as conn:
                assert conn.server.healthy_checks or conn.server is b
        eb = pool.stats().endpoints[1]
        assert eb.state == "ejected" and eb.last_error == "check failed"


def test_add_and_remove_endpoints_at_run_time_draining_gracefully() -> None:
    a, b = Server("a"), Server("b")
    with make([a]) as pool:
        added = pool.add_endpoint(Endpoint(b, name="b"))
        assert repr(added) == "Endpoint('b', weight=1.0)"
        with pytest.raises(ValueError, match="already in pool"):
            pool.add_endpoint(Endpoint(b, name="b"))
        leases = [pool.get() for _ in range(4)]
        on_b = [lease for lease in leases if lease.endpoint.name == "b"]
        assert len(on_b) == 2
        pool.remove_endpoint("b")
        assert [e.name for e in pool.endpoints()] == ["a"]
        assert {pool.get().endpoint.name for _ in range(4)} == {"a"}
        # borrowed resources of the removed endpoint stay usable until returned
        assert not on_b[0].resource.closed
        for lease in leases:
            lease.release()
        assert all(lease.resource.closed for lease in on_b)
        with pytest.raises(KeyError, match="no endpoint b"):
            pool.remove_endpoint("b")
        pool.add_endpoint(Endpoint(b, name="b"))  # may come back later
        assert {pool.get().endpoint.name for _ in range(6)} == {"a", "b"}


def test_no_endpoints_error_and_bad_options() -> None:
    with EndpointPool(connect, []) as pool:
        with pytest.raises(PoolTimeout, match="has no endpoints; add one"):
            pool.get()
    with pytest.raises(ValueError, match=r"strategy \('fastest'\) must be one of"):
        EndpointPool(connect, [], strategy="fastest")
    with pytest.raises(ValueError, match=r"weight \(0\) of endpoint x must be > 0"):
        Endpoint("x", 0)
    with pytest.raises(TypeError, match="create must be a callable"):
        EndpointPool(42, [])  # type: ignore[arg-type]


def test_keyed_factory_gets_the_target() -> None:
    made: list[str] = []

    class Conns(KeyedFactory[Server, Conn]):
        def create(self, key: Server) -> Conn:
            made.append(key.name)
            return key.connect()

        def destroy(self, resource: Conn) -> None:
            resource.closed = True

    a = Server("a")
    with EndpointPool(Conns(), [Endpoint(a, name="a")]) as pool:
        with pool.acquire() as conn:
            pass
    assert made == ["a"] and conn.closed


def test_endpoint_repr_never_shows_target() -> None:
    ep = Endpoint("host=db1 password=topsecret user=app")
    assert "topsecret" not in repr(ep) and "password=***" in repr(ep)


def test_thread_stress_with_flapping_endpoint() -> None:
    clock = Clock()
    servers = [Server(f"s{i}") for i in range(3)]
    failures: list[BaseException] = []
    served = Counter[str]()
    lock = threading.Lock()
    with make(
        servers, clock, strategy="least_in_use", max_per_endpoint=4, base_backoff=0.5
    ) as pool:

        def worker(n: int) -> None:
            try:
                for i in range(100):
                    if n == 0 and i % 20 == 0:
                        servers[2].up = not servers[2].up
                        clock.now += 1.0
                    with pool.acquire() as conn:
                        assert not conn.closed
                        with lock:
                            served[conn.server.name] += 1
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not failures, failures[:3]
        assert sum(served.values()) == 1600
        s = pool.stats()
        assert s.in_use == 0
        assert all(e.in_use == 0 and e.size <= 4 for e in s.endpoints)


def test_releasing_a_lease_twice_counts_its_end_once() -> None:
    with make([Server("db0")]) as pool:
        held = pool.get()
        lease = pool.get()
        with pytest.raises(ReleaseError):
            with lease:
                lease.release()  # released early inside its with block: the exit raises
        with pytest.raises(ReleaseError):
            lease.discard()
        assert lease.released
        assert [e.in_use for e in pool.stats().endpoints] == [1]  # `held` is still out
        held.release()
        assert [e.in_use for e in pool.stats().endpoints] == [0]
