"""Semantics of the Redis lease scripts and the sync RedisBudget, against the real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

import poolkit
from poolkit.cluster import BudgetExhausted, BudgetToken, BudgetUnavailable, RedisBudget

from .conftest import SHARED_REDIS
from helpers import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def make(budget_name: str) -> Iterator:
    """Build RedisBudget objects ("processes") on the test's budget; all closed afterwards."""
    made: list[RedisBudget] = []

    def factory(limit: int = 3, **kw: object) -> RedisBudget:
        kw.setdefault("restart_quiet", 0)
        b = RedisBudget(SHARED_REDIS, budget_name, limit, **kw)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def stop_renewing(b: RedisBudget) -> None:
    """Make ``b`` behave like a frozen/dead process: its renewer stops, nothing is released."""
    b._stop.set()
    if b._thread is not None:
        b._thread.join(10)


def server_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return sec * 1000 + usec // 1000


def holders_zset(r: redis.Redis, name: str) -> dict[str, float]:
    return {
        m.decode(): s
        for m, s in r.zrange(f"{{poolkit:budget:{name}}}:holders", 0, -1, withscores=True)
    }


def test_grants_up_to_limit_then_refuses_with_a_clear_error(make, budget_name) -> None:
    a, b = make(3), make(3)
    tokens = [a.acquire(1.0) for _ in range(3)]
    assert all(isinstance(t, BudgetToken) for t in tokens)
    with pytest.raises(BudgetExhausted) as info:
        b.acquire(0.1)
    err = info.value
    assert isinstance(err, poolkit.PoolError)
    assert err.name == budget_name and err.limit == 3 and err.reason == "full"
    assert err.holders == {a.process_id: 3}
    msg = str(err)
    assert budget_name in msg and "3/3" in msg and a.process_id in msg
    a.release(tokens[0])
    t = b.acquire(1.0)
    assert b.info().held == 1 and a.info().held == 2
    b.release(t)
    for tok in tokens[1:]:
        a.release(tok)
    assert a.holders() == {}


def test_fencing_tokens_increase_across_processes(make) -> None:
    a, b = make(4), make(4)
    seen: list[int] = []
    for i in range(20):
        who = a if i % 2 else b
        t = who.acquire(1.0)
        assert t.fence is not None
        seen.append(t.fence)
        who.release(t)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_expiry_is_taken_from_the_server_clock(make, budget_name, rclient, monkeypatch) -> None:
    # a client clock one day ahead must not move the lease's expiry: the client sends no time
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
    a = make(2, lease_ttl=5.0)
    before = server_ms(rclient)
    tok = a.acquire(1.0)
    after = server_ms(rclient)
    score = holders_zset(rclient, budget_name)[tok.member]
    assert before + 5000 <= score <= after + 5000


def test_a_process_that_stops_renewing_loses_its_leases_after_ttl(
    make, budget_name, rclient
) -> None:
    a = make(2, lease_ttl=0.6)
    b = make(2, lease_ttl=0.6)
    a.acquire(1.0), a.acquire(1.0)
    stop_renewing(a)  # like a SIGKILLed or frozen process
    with pytest.raises(BudgetExhausted):
        b.acquire(0)
    t1 = b.acquire(10.0)  # granted once a's leases expire by the server's clock
    t2 = b.acquire(10.0)
    assert holders_zset(rclient, budget_name).keys() == {t1.member, t2.member}
    assert b.holders() == {b.process_id: 2}


def test_renewal_keeps_leases_alive_past_ttl(make) -> None:
    a = make(1, lease_ttl=0.4)  # renews every 0.1 s
    b = make(1, lease_ttl=0.4)
    a.acquire(1.0)
    with pytest.raises(BudgetExhausted):
        b.acquire(1.5)  # waits well past the ttl: a's renewer keeps the lease
    assert a.info().renewals_total >= 3


def test_renew_is_one_batched_call_for_all_leases(make, budget_name, rclient) -> None:
    a = make(10, lease_ttl=30.0)
    stop_renewing(a)  # drive renew() by hand
    tokens = [a.acquire(1.0) for _ in range(6)]
    old = holders_zset(rclient, budget_name)
    calls: list[object] = []
    script = a._renew_script
    orig = script.__call__

    class Counting:
        def __call__(self, *args: object, **kw: object) -> object:
            calls.append(kw.get("args"))
            return orig(*args, **kw)

    a._renew_script = Counting()  # type: ignore[assignment]
    time.sleep(0.01)  # let the server clock move on so renewed expiries differ
    a.renew()
    assert len(calls) == 1
    new = holders_zset(rclient, budget_name)
    assert set(new) == {t.member for t in tokens}
    assert all(new[m] > old[m] for m in new)


def test_max_per_process(make) -> None:
    a = make(10, max_per_process=2)
    b = make(10, max_per_process=2)
    t1, _t2 = a.acquire(1.0), a.acquire(1.0)
    with pytest.raises(BudgetExhausted) as info:
        a.acquire(0.05)
    assert info.value.reason == "max"
    b.acquire(1.0)  # another process is not affected
    # a waiter at max_per_process is woken by its own process's release
    got: list[BudgetToken] = []
    th = threading.Thread(target=lambda: got.append(a.acquire(10.0)))
    th.start()
    a.release(t1)
    th.join(15)
    assert len(got) == 1


def test_min_per_process_reserves_slots_for_live_processes(make) -> None:
    a = make(4, min_per_process=1)
    b = make(4, min_per_process=1)
    c = make(4, min_per_process=1)
    b.renew(), c.renew()  # b and c are alive (heartbeat) but hold nothing yet
    a.acquire(1.0), a.acquire(1.0)
    with pytest.raises(BudgetExhausted) as info:
        a.acquire(0.05)  # 2 held + 1 reserved for b + 1 for c = limit
    assert info.value.reason == "reserved"
    b.acquire(1.0)
    c.acquire(1.0)
    with pytest.raises(BudgetExhausted) as info:
        c.acquire(0.05)
    assert info.value.reason == "full"


def test_data_loss_quiet_window_prevents_over_grant(make, budget_name, rclient) -> None:
    # a renews by hand below; its leases (ttl 10 s) outlive the 1 s quiet window
    a = make(3, lease_ttl=10.0, restart_quiet=1.0)
    b = make(3, lease_ttl=10.0, restart_quiet=1.0)
    stop_renewing(a)
    tokens = [a.acquire(5.0) for _ in range(3)]  # first use: waits out the quiet window
    # Redis loses every key of the budget (as a restart without persistence would)
    rclient.delete(*rclient.scan_iter(match=f"{{poolkit:budget:{budget_name}}}:*"))
    with pytest.raises(BudgetExhausted) as info:
        b.acquire(0)
    assert info.value.reason == "quiet"
    a.renew()  # the holder's next renewal re-registers its leases
    assert a.info().readded_total == 3 and a.info().restarts_detected == 1
    with pytest.raises(BudgetExhausted) as info:
        b.acquire(2.0)  # past the quiet window: the budget is still (correctly) full
    assert info.value.reason == "full"
    assert set(holders_zset(rclient, budget_name)) == {t.member for t in tokens}
    a.release(tokens[0])
    t = a.acquire(1.0)  # a fence after the data loss is larger than every fence before it
    assert t.fence is not None and all(t.fence > (x.fence or 0) for x in tokens)


def test_without_quiet_window_over_grant_is_at_most_limit(make, budget_name, rclient) -> None:
    """The documented worst case with restart_quiet=0: 2 x limit until releases bring it down."""
    a = make(3, lease_ttl=5.0, restart_quiet=0)
    b = make(3, lease_ttl=5.0, restart_quiet=0)
    stop_renewing(a)
    stop_renewing(b)
    for _ in range(3):
        a.acquire(1.0)
    rclient.delete(*rclient.scan_iter(match=f"{{poolkit:budget:{budget_name}}}:*"))
    extra = [b.acquire(1.0) for _ in range(3)]  # b sees an empty budget
    with pytest.raises(BudgetExhausted):
        b.acquire(0)
    a.renew()  # a re-registers its 3 real leases even though that exceeds the limit
    assert len(holders_zset(rclient, budget_name)) == 6  # 2 x limit
    assert a.info().server_count == 6
    for t in extra:
        b.release(t)
    assert len(holders_zset(rclient, budget_name)) == 3
    with pytest.raises(BudgetExhausted):
        b.acquire(0)  # back at 3/3: no grant until a lease is given back
    a.release(next(iter(a._held.values())))
    b.acquire(1.0)


def test_release_is_idempotent_and_rejects_foreign_tokens(make) -> None:
    a = make(2)
    t = a.acquire(1.0)
    a.release(t)
    a.release(t)  # second release: no error, no effect
    assert a.holders() == {}
    with pytest.raises(ValueError, match="not one of its tokens"):
        a.release(BudgetToken("other-budget", "x#1", 1, 1))
    with pytest.raises(ValueError, match="not one of its tokens"):
        a.release("token")


def test_close_gives_back_leases_and_refuses_after(make) -> None:
    a = make(2)
    a.acquire(1.0), a.acquire(1.0)
    a.close()
    assert a.holders() == {}
    with pytest.raises(poolkit.PoolClosed):
        a.acquire(0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"limit": 0}, r"limit \(0\) must be an int >= 1"),
        ({"lease_ttl": 0}, r"lease_ttl \(0\) must be > 0"),
        ({"lease_ttl": 1.0, "renew_interval": 0.8}, r"renew_interval \(0.8\)"),
        ({"max_per_process": 0}, r"max_per_process \(0\)"),
        ({"min_per_process": 3, "max_per_process": 2}, r"min_per_process \(3\) must be <="),
        ({"mode": "loose"}, r"mode \('loose'\)"),
        ({"mode": "degraded"}, r"needs fallback_limit"),
        ({"name": "a{b}"}, r"name \('a\{b\}'\)"),
        ({"restart_quiet": -1}, r"restart_quiet \(-1\)"),
    ],
)
def test_bad_configuration_names_the_value(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"name": "x", "limit": 5}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        RedisBudget(SHARED_REDIS, **args)  # type: ignore[arg-type]


def test_repr_and_info_hide_the_password() -> None:
    b = RedisBudget("redis://:s3cret-canary@127.0.0.1:1/0", "x", 2, socket_timeout=0.2)
    try:
        assert "s3cret-canary" not in repr(b)
        with pytest.raises(BudgetUnavailable) as info:
            b.acquire(0.1)
        assert "s3cret-canary" not in str(info.value)
        assert "s3cret-canary" not in repr(b.info())
    finally:
        b.close()


def test_forked_child_is_a_new_holder_without_the_parents_leases(make, budget_name) -> None:
    import os
    import warnings

    a = make(3)
    parent_token = a.acquire(1.0)
    with warnings.catch_warnings():  # 3.12+ warns about fork() with threads running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: must never release or renew the parent's lease
        code = 1
        try:
            a.release(parent_token)  # not the child's lease: no effect
            t = a.acquire(1.0)
            holders = a.holders()
            ok = len(holders) == 2 and all(n == 1 for n in holders.values())
            a.release(t)
            code = 0 if ok and a.info().held == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert a.holders() == {a.process_id: 1}
    a.release(parent_token)


def test_release_wakes_a_blocked_waiter_and_leaves_no_stale_wakeups(
    make, budget_name, rclient
) -> None:
    tag = f"{{poolkit:budget:{budget_name}}}"
    a, b = make(1), make(1)
    for _ in range(5):  # nobody waits: releases push no wake-ups
        a.release(a.acquire(1.0))
    assert rclient.llen(f"{tag}:wake") == 0
    t = a.acquire(1.0)
    got: list[BudgetToken] = []
    th = threading.Thread(target=lambda: got.append(b.acquire(30.0)))
    th.start()
    wait_for(lambda: rclient.exists(f"{tag}:waiting"), timeout=10, what="waiter flagged")
    a.release(t)
    th.join(35)
    assert len(got) == 1 and b.holders() == {b.process_id: 1}


def test_release_racing_a_renewal_does_not_resurrect_the_lease(make, budget_name, rclient) -> None:
    """The renewer snapshots the leases, a release lands before its script runs: the script
    re-adds the released lease as "missing", and the budget must remove it again."""
    a = make(3, lease_ttl=30.0)
    stop_renewing(a)
    keep, gone = a.acquire(1.0), a.acquire(1.0)
    real = a._renew_script

    class ReleaseFirst:
        def __call__(self, *args: object, **kw: object) -> object:
            a.release(gone)  # lands between the snapshot and the script
            return real(*args, **kw)

    a._renew_script = ReleaseFirst()  # type: ignore[assignment]
    a.renew()
    assert set(holders_zset(rclient, budget_name)) == {keep.member}
    assert a.holders() == {a.process_id: 1}
