"""Unit tests of endpoint selection strategies and the ejection state machine (fake clock)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from poolkit._endpoint_policy import EndpointPolicy, redact


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, s: float) -> float:
        self.now += s
        return self.now


def make(strategy: str, n: int = 3, **kw: object) -> tuple[EndpointPolicy, list[int]]:
    policy = EndpointPolicy(strategy, rng=random.Random(7), **kw)  # type: ignore[arg-type]
    return policy, [policy.add(f"db{i}") for i in range(n)]


def test_round_robin_cycles_over_healthy() -> None:
    policy, ids = make("round_robin")
    assert [policy.pick(0.0) for _ in range(6)] == ids + ids


def test_primary_first_fails_over_in_order_and_back() -> None:
    clock = Clock()
    policy, (a, b, c) = make("primary_first", failure_threshold=1, base_backoff=2.0)
    assert policy.pick(clock.now) == a
    assert policy.on_failure(a, clock.now, "refused")
    assert policy.pick(clock.now) == b
    assert policy.on_failure(b, clock.now, "refused")
    assert policy.pick(clock.now) == c
    clock.advance(2.0)
    assert policy.due_probes(clock.now) == [a, b]
    assert policy.start_probe(a)
    assert policy.on_success(a, clock.now)
    assert policy.pick(clock.now) == a


def test_least_in_use_picks_least_loaded_and_spreads_ties() -> None:
    policy, (a, b, c) = make("least_in_use")
    policy.begin(a)
    policy.begin(a)
    policy.begin(b)
    assert policy.pick(0.0) == c
    policy.begin(c)
    assert policy.pick(0.0) in (b, c)
    policy.end(a)
    policy.end(a)
    assert policy.pick(0.0) == a
    # ties rotate instead of always hitting the first endpoint
    fresh, ids = make("least_in_use")
    assert {fresh.pick(0.0) for _ in range(3)} == set(ids)


def test_least_in_use_respects_weights() -> None:
    policy = EndpointPolicy("least_in_use")
    big, small = policy.add("big", weight=4), policy.add("small", weight=1)
    for _ in range(3):
        policy.begin(big)
    # 3/4 < 1/1 once small holds one lease
    policy.begin(small)
    assert policy.pick(0.0) == big


def test_random_two_choices_never_picks_the_most_loaded() -> None:
    policy, (a, b, c) = make("random_two_choices")
    for _ in range(5):
        policy.begin(a)
    policy.begin(b)
    picks = Counter(policy.pick(0.0) for _ in range(300))
    assert picks[a] == 0  # a loses every pair it is in
    # b wins only the pairs (a, b): about a third; c wins the other two thirds
    assert picks[c] > picks[b] > 0
    policy2, (x, y) = make("random_two_choices", n=2)
    policy2.begin(x)
    assert {policy2.pick(0.0) for _ in range(20)} == {y}


def test_weighted_smooth_round_robin_matches_weights() -> None:
    policy = EndpointPolicy("weighted")
    a, b, c = policy.add("a", 5), policy.add("b", 1), policy.add("c", 1)
    seq = [policy.pick(0.0) for _ in range(7)]
    assert Counter(seq) == {a: 5, b: 1, c: 1}
    # smooth: a never runs more than 3 times in a row in nginx's interleaving
    assert seq == [a, a, b, a, c, a, a]
    assert Counter(policy.pick(0.0) for _ in range(700)) == {a: 500, b: 100, c: 100}


def test_ejection_after_threshold_consecutive_failures_only() -> None:
    clock = Clock()
    policy, (a, b) = make("round_robin", n=2, failure_threshold=3)
    assert not policy.on_failure(a, clock.now, "e1")
    assert not policy.on_failure(a, clock.now, "e2")
    policy.on_success(a, clock.now)  # breaks the streak
    assert not policy.on_failure(a, clock.now, "e3")
    assert not policy.on_failure(a, clock.now, "e4")
    assert policy.state(a) == "healthy"
    assert policy.on_failure(a, clock.now, "e5")
    assert policy.state(a) == "ejected"
    snap = policy.snapshot(a, clock.now)
    assert snap.errors_total == 5 and snap.ejections_total == 1 and snap.last_error == "e5"
    assert {policy.pick(clock.now) for _ in range(4)} == {b}


def test_backoff_doubles_caps_and_probe_is_single() -> None:
    clock = Clock()
    policy, (a, _b) = make(
        "round_robin", n=2, failure_threshold=1, base_backoff=1.0, max_backoff=5.0
    )
    policy.on_failure(a, clock.now, "down")
    delays = []
    for _ in range(5):
        assert policy.due_probes(clock.now) == []
        until = clock.now + policy.snapshot(a, clock.now).ejected_for_s  # type: ignore[operator]
        delays.append(until - clock.now)
        clock.now = until - 0.001
        assert policy.due_probes(clock.now) == []
        clock.now = until
        assert policy.due_probes(clock.now) == [a]
        assert policy.start_probe(a)
        assert policy.state(a) == "probing"
        assert not policy.start_probe(a)  # one trial at a time
        assert policy.due_probes(clock.now) == []
        assert a not in {policy.pick(clock.now) for _ in range(4)}
        assert policy.on_failure(a, clock.now, "still down")  # failed probe: ejected again
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert (
        policy.snapshot(a, clock.now).ejections_total == 1
    )  # re-ejections after probes count once


def test_probe_success_rejoins_and_backoff_resets_after_stable_period() -> None:
    clock = Clock()
    policy, (a, _b) = make(
        "round_robin", n=2, failure_threshold=1, base_backoff=1.0, max_backoff=8.0
    )
    policy.on_failure(a, clock.now, "down")
    clock.advance(1.0)
    policy.start_probe(a)
    policy.on_failure(a, clock.now, "down")  # next: 2 s
    clock.advance(2.0)
    policy.start_probe(a)
    assert policy.on_success(a, clock.now)
    assert policy.state(a) == "healthy"
    assert a in {policy.pick(clock.now) for _ in range(4)}
    # flapping soon after rejoining: backoff keeps growing (4 s)
    clock.advance(1.0)
    policy.on_failure(a, clock.now, "down")
    assert policy.snapshot(a, clock.now).ejected_for_s == 4.0
    clock.advance(4.0)
    policy.start_probe(a)
    policy.on_success(a, clock.now)
    # stable for max_backoff: the next ejection starts from the base again
    clock.advance(8.0)
    policy.on_failure(a, clock.now, "down")
    assert policy.snapshot(a, clock.now).ejected_for_s == 1.0
    assert policy.snapshot(a, clock.now).ejections_total == 3


def test_all_ejected_pick_is_none_and_errors_are_listed() -> None:
    clock = Clock()
    policy, (a, b) = make("least_in_use", n=2, failure_threshold=1)
    policy.on_failure(a, clock.now, "refused a")
    policy.on_failure(b, clock.now, "timeout b")
    assert policy.pick(clock.now) is None
    assert policy.last_errors() == [
        ("db0", "ejected", "refused a"),
        ("db1", "ejected", "timeout b"),
    ]
    assert policy.next_probe_at() == clock.now + 1.0


def test_remove_endpoint_drains_then_forgets() -> None:
    policy, (a, b, c) = make("round_robin")
    policy.begin(b)
    policy.remove(b)
    assert b not in policy
    assert policy.ids() == [a, c]
    assert {policy.pick(0.0) for _ in range(6)} == {a, c}
    assert policy.snapshot(b, 0.0).draining  # still known while a lease is out
    policy.end(b)
    with pytest.raises(KeyError):
        policy.snapshot(b, 0.0)
    with pytest.raises(KeyError):
        policy.remove(b)
    d = policy.add("db3")
    assert d not in (a, b, c) and policy.ids() == [a, c, d]


def test_removed_ejected_endpoint_is_never_probed() -> None:
    policy, (a, _b) = make("round_robin", n=2, failure_threshold=1)
    policy.on_failure(a, 0.0, "down")
    policy.remove(a)
    assert policy.due_probes(1000.0) == []
    assert not policy.start_probe(a)


def test_manual_eject() -> None:
    policy, (a, b) = make("primary_first", n=2)
    policy.eject(a, 0.0, "maintenance")
    assert policy.pick(0.0) == b
    assert policy.snapshot(a, 0.0).last_error == "maintenance"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "fastest"}, r"strategy \('fastest'\) must be one of round_robin"),
        ({"failure_threshold": 0}, r"failure_threshold \(0\) must be >= 1"),
        ({"base_backoff": 0}, r"base_backoff \(0\) must be > 0"),
        ({"base_backoff": 2.0, "max_backoff": 1.0}, r"max_backoff \(1.0\) must be >= base_backoff"),
    ],
)
def test_bad_configuration_names_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointPolicy(**kwargs)


def test_bad_weight() -> None:
    with pytest.raises(ValueError, match=r"weight \(0\) of endpoint db must be > 0"):
        EndpointPolicy().add("db", weight=0)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("postgresql://app:s3cret@db1:5432/app", "postgresql://app:***@db1:5432/app"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("host=db1 password=s3cret user=app", "host=db1 password=*** user=app"),
        ("host=db1 password='a b c' user=app", "host=db1 password=*** user=app"),
        ("https://api/x?token=abc&x=1", "https://api/x?token=***&x=1"),
        ("http://db1:8080/path", "http://db1:8080/path"),
        ("PWD=xyz;Server=db", "PWD=***;Server=db"),
    ],
)
def test_redact_hides_secrets(raw: str, shown: str) -> None:
    assert redact(raw) == shown
