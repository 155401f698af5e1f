"""The budget when Redis dies, restarts empty or comes back: private redis-server per test."""

from __future__ import annotations

import itertools
import logging

import pytest
import redis

from poolkit import Pool, PoolTimeout
from poolkit.cluster import BudgetExhausted, BudgetUnavailable, RedisBudget

from helpers import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.faults]


def zcard(url: str, name: str) -> int:
    with redis.Redis.from_url(url, socket_timeout=2) as r:
        return int(r.zcard(f"{{poolkit:budget:{name}}}:holders"))


def test_strict_mode_refuses_growth_while_redis_is_down_and_reregisters_after(
    private_redis, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="poolkit.cluster")
    b = RedisBudget(private_redis.url, "strict", 5, lease_ttl=10.0, restart_quiet=0)
    b._stop.set()  # renew by hand, deterministically
    try:
        held = [b.acquire(1.0) for _ in range(3)]
        assert b.status() == "ok"
        private_redis.kill()
        with pytest.raises(BudgetUnavailable) as info:
            b.acquire(5.0)
        assert "strict" in str(info.value) and "existing resources keep serving" in str(info.value)
        assert b.status() == "unavailable"
        b.renew()  # logged, not raised
        b.release(held.pop())  # logged, not raised; the lease would expire on the server
        assert b.info().renew_failures_total == 1
        assert any("Redis unreachable" in r.getMessage() for r in caplog.records)

        private_redis.start()  # empty: the data set is gone
        b.renew()
        assert b.status() == "ok"
        info2 = b.info()
        assert info2.restarts_detected == 1 and info2.readded_total == 2
        assert zcard(private_redis.url, "strict") == 2  # the 2 live leases, not the released one
        t = b.acquire(1.0)
        assert t.fence is not None and all(t.fence > (x.fence or 0) for x in held)
    finally:
        b.close()


def test_degraded_mode_grows_up_to_the_fallback_limit(private_redis) -> None:
    b = RedisBudget(
        private_redis.url, "deg", 10, mode="degraded", fallback_limit=3, restart_quiet=0
    )
    b._stop.set()
    try:
        b.acquire(1.0)
        private_redis.kill()
        local = [b.acquire(1.0), b.acquire(1.0)]  # 1 from Redis + 2 local = fallback_limit
        assert all(t.fence is None for t in local)
        assert b.status() == "degraded"
        with pytest.raises(BudgetUnavailable, match=r"fallback_limit=3"):
            b.acquire(1.0)
        assert b.info().local_held == 2
        private_redis.start()
        b.renew()  # the local leases are real resources: they are registered now
        assert zcard(private_redis.url, "deg") == 3
        assert b.status() == "ok"
    finally:
        b.close()


def test_restart_quiet_window_then_budget_holds(private_redis) -> None:
    """A real redis-server restart without persistence: no over-grant (bound = 0)."""
    a = RedisBudget(private_redis.url, "q", 3, lease_ttl=10.0, restart_quiet=1.0)
    b = RedisBudget(private_redis.url, "q", 3, lease_ttl=10.0, restart_quiet=1.0)
    a._stop.set()
    try:
        for _ in range(3):
            a.acquire(5.0)
        private_redis.kill()
        private_redis.start()
        with pytest.raises(BudgetExhausted) as info:
            b.acquire(0)
        assert info.value.reason == "quiet"
        a.renew()
        with pytest.raises(BudgetExhausted) as info:
            b.acquire(2.0)
        assert info.value.reason == "full"
        assert zcard(private_redis.url, "q") == 3
    finally:
        a.close()
        b.close()


def test_pool_with_budget_keeps_serving_while_redis_is_down(private_redis) -> None:
    counter = itertools.count()
    destroyed: list[int] = []
    b = RedisBudget(private_redis.url, "pool", 2, lease_ttl=10.0, restart_quiet=0)
    pool = Pool(
        lambda: next(counter),
        destroy=destroyed.append,
        max_size=5,
        acquire_timeout=0.5,
        budget=b,
        name="budgeted",
    )
    try:
        l1, l2 = pool.get(), pool.get()
        with pytest.raises(PoolTimeout) as info:
            pool.get(timeout=1.5)  # the pool may hold 5, the fleet budget only 2
        assert isinstance(info.value.__cause__, BudgetExhausted)
        assert pool.stats().size == 2 and pool.stats().budget_status == "ok"
        l1.release()
        private_redis.kill()
        with pool.acquire() as r:  # an idle resource still serves without Redis
            assert r in (0, 1)
        wait_for(lambda: b.status() == "unavailable", timeout=10, what="renew notices Redis down")
        assert pool.stats().budget_status == "unavailable"
        health = pool.health()
        assert health.status != "ok" and "budget unavailable" in health.reasons
        private_redis.start()
        wait_for(lambda: b.status() == "ok", timeout=10, what="renew reaches Redis again")
        wait_for(lambda: zcard(private_redis.url, "pool") == 2, timeout=10, what="re-register")
        l2.release()
    finally:
        pool.close()
        b.close()
    assert sorted(destroyed) == [0, 1]


@pytest.mark.parametrize(("mode", "grow_to"), [("strict", 2), ("degraded", 3)])
def test_frozen_redis_does_not_hang_and_caps_growth(tcp_proxy, budget_name, mode, grow_to) -> None:
    """Redis blackholed (no FIN/RST): calls time out after socket_timeout; strict never grows
    past the pre-freeze size, degraded grows only up to fallback_limit."""
    proxy = tcp_proxy(("127.0.0.1", 6379))
    b = RedisBudget(
        f"redis://127.0.0.1:{proxy.port}/0",
        budget_name,
        10,
        lease_ttl=4.0,
        restart_quiet=0,
        socket_timeout=0.3,
        mode=mode,
        fallback_limit=3 if mode == "degraded" else None,
    )
    pool = Pool(object, max_size=5, acquire_timeout=1.0, budget=b)
    try:
        held = [pool.get(), pool.get()]  # two leases granted through Redis
        proxy.set_mode("freeze")
        for _ in range(grow_to - 1):  # strict: 1 refused; degraded: 1 local lease, 1 refused
            try:
                held.append(pool.get(timeout=2.0))
            except PoolTimeout as exc:
                assert isinstance(exc.__cause__, BudgetUnavailable)
        assert pool.stats().size == grow_to
        assert b.status() == ("unavailable" if mode == "strict" else "degraded")
        for lease in held:
            lease.release()
        with pool.acquire():  # existing resources keep serving while Redis is frozen
            pass
        proxy.set_mode("pass")
        wait_for(lambda: b.status() == "ok", timeout=10, what="renewal through the proxy")
    finally:
        proxy.set_mode("pass")
        pool.close()
        b.close()


def test_releases_during_an_outage_warn_once_not_per_lease(private_redis, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="poolkit.cluster")
    b = RedisBudget(private_redis.url, "quiet-logs", 10, lease_ttl=10.0, restart_quiet=0)
    b._stop.set()
    try:
        held = [b.acquire(1.0) for _ in range(4)]
        private_redis.kill()
        for token in held:
            b.release(token)  # each is logged, never raised
        release_logs = [r for r in caplog.records if "could not release" in r.getMessage()]
        assert len(release_logs) == 4
        assert [r.levelno for r in release_logs].count(logging.WARNING) == 1
    finally:
        b.close()
