"""Fake resources and factories for the core pool tests: one switch per fault."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import pytest


@dataclass(eq=False)
class Thing:
    """A fake resource that knows whether it is closed and who uses it."""

    id: int
    closed: bool = False
    dirty: bool = False
    users: int = 0


@dataclass
class Things:
    """Creates Things; can be told to fail, and records every create and destroy."""

    fail_next: int = 0
    fail_forever: bool = False
    created: list[Thing] = field(default_factory=list)
    destroyed: list[Thing] = field(default_factory=list)
    gate: threading.Event | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self) -> Thing:
        if self.gate is not None:
            self.gate.wait(10)
        with self._lock:
            if self.fail_forever or self.fail_next > 0:
                self.fail_next = max(self.fail_next - 1, 0)
                raise ConnectionRefusedError("server says no")
            thing = Thing(next(self._ids))
            self.created.append(thing)
            return thing

    def destroy(self, thing: Thing) -> None:
        assert not thing.closed, f"{thing} destroyed twice"
        thing.closed = True
        with self._lock:
            self.destroyed.append(thing)

    def reset(self, thing: Thing) -> None:
        thing.dirty = False

    @property
    def alive(self) -> int:
        return len(self.created) - len(self.destroyed)


@pytest.fixture
def things() -> Things:
    return Things()
