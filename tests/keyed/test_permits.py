"""Unit tests of the sans-I/O permit ledger (global cap, FIFO across keys, evictions)."""

from __future__ import annotations

import random

import pytest

from poolkit._permits import PermitLedger, choose_victim


def test_grants_until_cap_then_queues_fifo_across_keys() -> None:
    ledger = PermitLedger(2)
    a = ledger.request("a")
    b = ledger.request("b")
    c = ledger.request("c")
    d = ledger.request("a")
    assert a.granted and b.granted
    assert not c.granted and not d.granted
    assert ledger.waiting == 2 and ledger.free == 0
    # a freed permit of key "b" serves the oldest waiter, whatever its key
    assert ledger.release(b) is c
    assert c.granted and ledger.in_use == 2
    assert ledger.release(a) is d
    assert ledger.waiting == 0


def test_newcomer_never_jumps_the_queue() -> None:
    ledger = PermitLedger(1)
    a = ledger.request("a")
    waiting = ledger.request("b")
    ledger.max_total = 2  # raw bump without resize: a free permit but a queue
    newcomer = ledger.request("c")
    assert not newcomer.granted
    assert ledger.head() is waiting
    assert a.granted


def test_double_release_is_ignored() -> None:
    ledger = PermitLedger(1)
    a = ledger.request("a")
    assert ledger.release(a) is None
    assert ledger.release(a) is None
    assert ledger.in_use == 0
    assert ledger.request("b").granted
    assert ledger.in_use == 1


def test_cancel_waiting_and_cancel_after_grant_passes_permit_on() -> None:
    ledger = PermitLedger(1)
    a = ledger.request("a")
    b = ledger.request("b")
    c = ledger.request("c")
    assert ledger.cancel(b) is None
    assert ledger.waiting == 1
    # a's permit goes to c; a timed-out c that was granted meanwhile passes it on
    d = ledger.request("d")
    assert ledger.release(a) is c
    assert ledger.cancel(c) is d
    assert d.granted and ledger.in_use == 1
    assert ledger.cancel(b) is None  # already gone: no-op


def test_resize_grants_waiters() -> None:
    ledger = PermitLedger(1)
    ledger.request("a")
    b, c, d = ledger.request("b"), ledger.request("c"), ledger.request("d")
    woken = ledger.resize(3)
    assert woken == [b, c]
    assert not d.granted
    with pytest.raises(ValueError, match=r"max_total \(0\) must be >= 1"):
        ledger.resize(0)


def test_bad_cap_names_value() -> None:
    with pytest.raises(ValueError, match=r"max_total \(-1\) must be >= 1"):
        PermitLedger(-1)


def test_evictions_never_exceed_waiters() -> None:
    ledger = PermitLedger(1)
    ledger.request("a")
    assert not ledger.begin_eviction()  # nobody waits
    ledger.request("b")
    ledger.request("c")
    assert ledger.begin_eviction()
    assert ledger.begin_eviction()
    assert not ledger.begin_eviction()
    ledger.end_eviction(1)
    ledger.end_eviction(0)
    assert ledger.evicting == 0 and ledger.evictions_total == 1


def test_drain_returns_all_waiters() -> None:
    ledger = PermitLedger(1)
    ledger.request("a")
    waiters = [ledger.request(k) for k in "bcd"]
    assert ledger.drain() == waiters
    assert ledger.waiting == 0


def test_choose_victim_oldest_idle_other_key() -> None:
    cands = [("a", 5.0), ("b", None), ("c", 2.0), ("d", 3.0)]
    assert choose_victim(cands) == "c"
    assert choose_victim(cands, exclude="c") == "d"
    assert choose_victim([("a", None)]) is None
    assert choose_victim([]) is None


def test_random_sequences_keep_invariants() -> None:
    rng = random.Random(4)
    for _ in range(50):
        cap = rng.randint(1, 5)
        ledger = PermitLedger(cap)
        held: list = []
        waiting: list = []
        order: list = []  # expected grant order of waiters
        for _step in range(200):
            op = rng.random()
            if op < 0.45:
                t = ledger.request(rng.choice("abc"))
                (held if t.granted else waiting).append(t)
                if not t.granted:
                    order.append(t)
            elif op < 0.8 and held:
                t = held.pop(rng.randrange(len(held)))
                got = ledger.release(t)
                if got is not None:
                    assert got is order.pop(0)  # FIFO hand-off
                    waiting.remove(got)
                    held.append(got)
            elif waiting:
                t = waiting.pop(rng.randrange(len(waiting)))
                order.remove(t)
                assert ledger.cancel(t) is None
            assert ledger.in_use == len(held) <= cap
            assert ledger.waiting == len(waiting)
            assert not waiting or ledger.in_use == cap  # no idle permit while someone waits
