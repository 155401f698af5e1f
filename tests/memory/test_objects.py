"""ObjectPool: reuse, reset, bounds, double-put detection, stats and thread safety."""

from __future__ import annotations

import io
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolkit.errors import ReleaseError
from poolkit.objects import ObjectPool, ObjectPoolStats


class Scratch:
    """A reusable object that records who holds it and whether it was reset."""

    def __init__(self) -> None:
        self.data: list[int] = []
        self.owner: object | None = None
        self.resets = 0

    def reset(self) -> None:
        self.data.clear()
        self.resets += 1


def check_invariants(s: ObjectPoolStats) -> None:
    assert s.gets == s.news + s.reuses
    assert s.puts == s.kept + s.dropped + s.reset_errors
    assert 0 <= s.idle <= s.max_idle
    assert s.idle == s.kept + s.prefilled - s.reuses - s.cleared


def test_reuses_the_same_object_after_reset() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=Scratch.reset, max_idle=4)
    a = pool.get()
    a.data.append(1)
    pool.put(a)
    b = pool.get()
    assert b is a
    assert b.data == []
    assert b.resets == 1
    s = pool.stats()
    assert (s.gets, s.news, s.reuses, s.puts) == (2, 1, 1, 1)
    assert s.hit_rate == 0.5
    check_invariants(s)


def test_lifo_order_and_bytesio_example() -> None:
    pool: ObjectPool[io.BytesIO] = ObjectPool(
        io.BytesIO, reset=lambda b: (b.seek(0), b.truncate()), max_idle=8
    )
    with pool.borrow() as buf:
        buf.write(b"secret")
    with pool.borrow() as again:
        assert again is buf
        assert again.getvalue() == b""
    a, b = pool.get(), pool.get()
    pool.put(a)
    pool.put(b)
    assert pool.get() is b  # most recently returned first


def test_max_idle_bounds_what_is_kept() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, max_idle=3)
    objs = [pool.get() for _ in range(10)]
    for obj in objs:
        pool.put(obj)
    s = pool.stats()
    assert s.idle == 3 == len(pool)
    assert s.dropped == 7
    assert s.kept == 3
    check_invariants(s)


def test_max_idle_zero_keeps_nothing() -> None:
    calls: list[Scratch] = []
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=calls.append, max_idle=0)
    pool.put(pool.get())
    assert pool.stats().idle == 0
    assert calls == []  # a dropped object is not reset


def test_double_put_raises_and_leaves_the_pool_unchanged() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=Scratch.reset)
    obj = pool.get()
    pool.put(obj)
    before = pool.stats()
    with pytest.raises(ReleaseError, match="twice"):
        pool.put(obj)
    assert pool.stats() == before
    assert obj.resets == 1
    # The object is handed out once only.
    assert pool.get() is obj
    assert pool.get() is not obj


def test_reset_error_drops_the_object_and_propagates() -> None:
    def bad_reset(obj: Scratch) -> None:
        raise RuntimeError("cannot reset")

    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=bad_reset)
    obj = pool.get()
    with pytest.raises(RuntimeError, match="cannot reset"):
        pool.put(obj)
    s = pool.stats()
    assert s.idle == 0
    assert s.reset_errors == 1
    check_invariants(s)
    assert pool.get() is not obj


def test_borrow_returns_the_object_when_the_block_raises() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=Scratch.reset)
    with pytest.raises(KeyError):
        with pool.borrow() as obj:
            obj.data.append(3)
            raise KeyError("boom")
    assert pool.stats().idle == 1
    assert pool.get() is obj
    assert obj.data == []


def test_prefill_and_clear() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, max_idle=5)
    assert pool.prefill(10) == 5
    assert pool.prefill(3) == 0
    s = pool.stats()
    assert (s.idle, s.prefilled, s.news) == (5, 5, 0)
    pool.get()
    assert pool.stats().reuses == 1
    assert pool.clear() == 4
    s = pool.stats()
    assert s.idle == 0
    assert s.cleared == 4
    check_invariants(s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_idle": -1}, r"max_idle \(-1\) must be an int >= 0"),
        ({"max_idle": 1.5}, r"max_idle \(1.5\) must be an int >= 0"),
    ],
)
def test_bad_configuration_names_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ObjectPool(Scratch, **kwargs)  # type: ignore[arg-type]


def test_bad_callables_are_refused() -> None:
    with pytest.raises(TypeError, match="new"):
        ObjectPool(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reset"):
        ObjectPool(Scratch, reset="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"count \(-1\)"):
        ObjectPool(Scratch).prefill(-1)


def test_repr_shows_name_and_counts() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, max_idle=2, name="scratch")
    pool.put(pool.get())
    assert repr(pool) == "<ObjectPool 'scratch' idle=1/2 gets=1 news=1>"
    assert pool.name == "scratch"
    assert pool.max_idle == 2


def test_32_threads_never_share_an_object_and_stats_add_up() -> None:
    pool: ObjectPool[Scratch] = ObjectPool(Scratch, reset=Scratch.reset, max_idle=8)
    errors: list[str] = []
    start = threading.Barrier(32)
    rounds = 300

    def worker(me: int) -> None:
        start.wait(timeout=30)
        for i in range(rounds):
            with pool.borrow() as obj:
                if obj.owner is not None or obj.data:
                    errors.append(f"thread {me} got an object owned by {obj.owner}")
                obj.owner = me
                obj.data.append(i)
                if i % 7 == 0:
                    # A second object at once, so the idle list empties and refills.
                    extra = pool.get()
                    if extra is obj or extra.owner is not None:
                        errors.append(f"thread {me} got the same object twice")
                    pool.put(extra)
                if obj.owner != me or obj.data != [i]:
                    errors.append(f"thread {me}: object changed under it")
                obj.owner = None

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    s = pool.stats()
    expected_gets = 32 * (rounds + len(range(0, rounds, 7)))
    assert s.gets == expected_gets
    assert s.puts == expected_gets
    assert s.idle <= 8
    check_invariants(s)
    assert s.news <= 32 * 2 + s.dropped  # never more objects alive than borrowers need


class ObjectPoolMachine(RuleBasedStateMachine):
    """Random get/put/double-put/clear sequences against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.max_idle = 3
        self.pool: ObjectPool[Scratch] = ObjectPool(
            Scratch, reset=Scratch.reset, max_idle=self.max_idle
        )
        self.out: list[Scratch] = []
        self.idle_model: list[Scratch] = []
        self.returned: list[Scratch] = []

    @rule()
    def get(self) -> None:
        obj = self.pool.get()
        assert all(obj is not o for o in self.out), "handed out twice"
        if self.idle_model:
            assert obj is self.idle_model.pop()
            assert obj.data == []
        obj.data.append(1)
        self.out.append(obj)

    @precondition(lambda self: self.out)
    @rule(index=st.integers(min_value=0, max_value=100))
    def put(self, index: int) -> None:
        obj = self.out.pop(index % len(self.out))
        self.pool.put(obj)
        if len(self.idle_model) < self.max_idle:
            self.idle_model.append(obj)

    @precondition(lambda self: self.idle_model)
    @rule()
    def double_put(self) -> None:
        before = self.pool.stats()
        try:
            self.pool.put(self.idle_model[-1])
        except ReleaseError:
            pass
        else:
            raise AssertionError("double put not detected")
        assert self.pool.stats() == before

    @rule()
    def clear(self) -> None:
        assert self.pool.clear() == len(self.idle_model)
        self.idle_model.clear()

    @invariant()
    def counters_add_up(self) -> None:
        s = self.pool.stats()
        check_invariants(s)
        assert s.idle == len(self.idle_model)


ObjectPoolMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
test_object_pool_state_machine = ObjectPoolMachine.TestCase
