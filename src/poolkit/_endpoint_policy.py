"""Sans-I/O endpoint selection and outlier ejection (healthy, ejected, probing) on a given clock."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "STRATEGIES",
    "EndpointPolicy",
    "EndpointSnapshot",
    "EndpointState",
    "Strategy",
    "redact",
]

Strategy = Literal["round_robin", "least_in_use", "random_two_choices", "weighted", "primary_first"]
STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "least_in_use",
    "random_two_choices",
    "weighted",
    "primary_first",
)
EndpointState = Literal["healthy", "ejected", "probing"]

_URL_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:\s]*:)[^@\s]*@")
_KV_SECRET = re.compile(
    r"(?P<pre>\b(?:password|passwd|pwd|secret|token|api_key|apikey|sslpassword)\s*[=:]\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,)]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Hide passwords in URLs (``user:***@host``) and ``password=...``-style pairs.

    Example::

        >>> redact("postgresql://app:s3cret@db1:5432/app")
        'postgresql://app:***@db1:5432/app'
        >>> redact("host=db1 password='x y' user=app")
        'host=db1 password=*** user=app'
    """
    text = _URL_PASSWORD.sub(r"\g<pre>***@", text)
    return _KV_SECRET.sub(r"\g<pre>***", text)


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """Policy view of one endpoint (state, counters), as shown in stats."""

    id: int
    name: str
    weight: float
    state: EndpointState
    in_use: int
    errors_total: int
    consecutive_failures: int
    ejections_total: int
    ejected_for_s: float | None
    last_error: str | None
    draining: bool


class _Entry:
    __slots__ = (
        "check_streak",
        "create_streak",
        "current_weight",
        "ejected_until",
        "ejections",
        "errors",
        "id",
        "in_use",
        "last_error",
        "level",
        "name",
        "rejoined_at",
        "removed",
        "state",
        "weight",
    )

    def __init__(self, ep_id: int, name: str, weight: float) -> None:
        self.id = ep_id
        self.name = name
        self.weight = weight
        self.state: EndpointState = "healthy"
        self.in_use = 0
        self.errors = 0
        self.create_streak = 0
        self.check_streak = 0
        self.ejections = 0
        self.level = 0
        self.ejected_until = 0.0
        self.rejoined_at = 0.0
        self.last_error: str | None = None
        self.removed = False
        self.current_weight = 0.0


class EndpointPolicy:
    """Chooses an endpoint per borrow and runs outlier ejection; never reads the clock itself.

    * ``pick(now)`` returns the id of a healthy endpoint chosen by the strategy, or None
      when none is healthy. ``due_probes(now)`` lists ejected endpoints whose backoff has
      run out; the shell marks each with ``start_probe`` and tries one trial resource.
    * ``on_success``/``on_failure`` report creations and checks. ``failure_threshold``
      failures in a row eject an endpoint for ``base_backoff * 2**level`` seconds (capped
      at ``max_backoff``); ``level`` grows with each ejection and resets once the endpoint
      stayed healthy for ``max_backoff``.

    Example::

        policy = EndpointPolicy("round_robin", failure_threshold=2)
        a, b = policy.add("db1"), policy.add("db2")
        assert [policy.pick(0.0), policy.pick(0.0)] == [a, b]
        policy.on_failure(a, 0.0, "refused")
        assert policy.on_failure(a, 0.0, "refused") is True  # ejected
        assert policy.pick(0.0) == b
    """

    def __init__(
        self,
        strategy: str = "round_robin",
        *,
        failure_threshold: int = 3,
        base_backoff: float = 1.0,
        max_backoff: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy ({strategy!r}) must be one of {', '.join(STRATEGIES)}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold ({failure_threshold}) must be >= 1")
        if not base_backoff > 0:
            raise ValueError(f"base_backoff ({base_backoff}) must be > 0")
        if max_backoff < base_backoff:
            raise ValueError(
                f"max_backoff ({max_backoff}) must be >= base_backoff ({base_backoff})"
            )
        self.strategy = strategy
        self.failure_threshold = failure_threshold
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._rng = rng if rng is not None else random.Random()
        self._entries: dict[int, _Entry] = {}
        self._order: list[_Entry] = []  # insertion order = priority order for primary_first
        self._healthy: list[_Entry] = []
        self._next_id = 0
        self._rr = 0
        self._next_probe_at = float("inf")

    # -- membership ---------------------------------------------------------------------
    def add(self, name: str, weight: float = 1.0) -> int:
        """Add an endpoint (healthy) and return its id."""
        if not weight > 0:
            raise ValueError(f"weight ({weight}) of endpoint {name} must be > 0")
        ep_id = self._next_id
        self._next_id += 1
        entry = _Entry(ep_id, name, float(weight))
        self._entries[ep_id] = entry
        self._order.append(entry)
        self._rebuild()
        return ep_id

    def remove(self, ep_id: int) -> None:
        """Stop choosing an endpoint; it is forgotten once its last lease ends (``end``)."""
        entry = self._entries.get(ep_id)
        if entry is None or entry.removed:
            raise KeyError(ep_id)
        entry.removed = True
        self._order.remove(entry)
        if entry.in_use == 0:
            del self._entries[ep_id]
        self._rebuild()

    def __contains__(self, ep_id: object) -> bool:
        entry = self._entries.get(ep_id) if isinstance(ep_id, int) else None
        return entry is not None and not entry.removed

    def ids(self) -> list[int]:
        """Ids of the endpoints still in rotation (not removed), in priority order."""
        return [e.id for e in self._order]

    def name(self, ep_id: int) -> str:
        """The (redacted) display name of an endpoint."""
        return self._entries[ep_id].name

    def state(self, ep_id: int) -> EndpointState:
        """The state of an endpoint."""
        return self._entries[ep_id].state

    def _rebuild(self) -> None:
        self._healthy = [e for e in self._order if e.state == "healthy"]
        ejected = [e.ejected_until for e in self._order if e.state == "ejected"]
        self._next_probe_at = min(ejected) if ejected else float("inf")

    # -- selection ----------------------------------------------------------------------
    def pick(self, now: float) -> int | None:
        """The id of the healthy endpoint to use next, or None if no endpoint is healthy."""
        healthy = self._healthy
        n = len(healthy)
        if n == 0:
            return None
        if n == 1:
            return healthy[0].id
        strategy = self.strategy
        if strategy == "round_robin":
            idx = self._rr % n
            self._rr += 1
            return healthy[idx].id
        if strategy == "primary_first":
            return healthy[0].id
        if strategy == "least_in_use":
            start = self._rr % n
            self._rr += 1
            best = healthy[start]
            for i in range(1, n):
                cand = healthy[(start + i) % n]
                if cand.in_use * best.weight < best.in_use * cand.weight:
                    best = cand
            return best.id
        if strategy == "random_two_choices":
            rand = self._rng.random
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1  # two distinct endpoints, each pair equally likely
            a, b = healthy[i], healthy[j]
            return a.id if a.in_use * b.weight <= b.in_use * a.weight else b.id
        # weighted: smooth weighted round robin (nginx): deterministic, evenly interleaved
        total = 0.0
        best = healthy[0]
        for e in healthy:
            e.current_weight += e.weight
            total += e.weight
            if e.current_weight > best.current_weight:
                best = e
        best.current_weight -= total
        return best.id

    def begin(self, ep_id: int) -> None:
        """A lease on the endpoint started."""
        self._entries[ep_id].in_use += 1

    def end(self, ep_id: int) -> None:
        """A lease on the endpoint ended."""
        entry = self._entries.get(ep_id)
        if entry is None:
            return
        entry.in_use -= 1
        if entry.removed and entry.in_use <= 0:
            del self._entries[ep_id]

    # -- health ---------------------------------------------------------------------------
    def on_success(self, ep_id: int, now: float, kind: str = "create") -> bool:
        """A creation (``kind="create"``) or check (``"check"``) succeeded.

        It ends that kind's failure streak (a fresh connection does not vouch for a
        failing health check). Returns True if a probe brought the endpoint back.
        """
        entry = self._entries.get(ep_id)
        if entry is None:
            return False
        if kind == "check":
            entry.check_streak = 0
        else:
            entry.create_streak = 0
        if entry.state == "probing":
            entry.state = "healthy"
            entry.create_streak = entry.check_streak = 0
            entry.rejoined_at = now
            entry.current_weight = 0.0
            self._rebuild()
            return True
        return False

    def on_failure(self, ep_id: int, now: float, error: str, kind: str = "create") -> bool:
        """A creation or check failed with ``error`` (already redacted); True if it ejected now.

        ``failure_threshold`` failures of one kind in a row eject a healthy endpoint; any
        failure of a probe ejects it again.
        """
        entry = self._entries.get(ep_id)
        if entry is None:
            return False
        entry.errors += 1
        if kind == "check":
            entry.check_streak += 1
        else:
            entry.create_streak += 1
        entry.last_error = error
        streak = max(entry.create_streak, entry.check_streak)
        if entry.state == "probing" or (
            entry.state == "healthy" and streak >= self.failure_threshold
        ):
            self._eject(entry, now)
            return True
        return False

    def eject(self, ep_id: int, now: float, error: str | None = None) -> None:
        """Eject an endpoint at once (an operator's decision or an external health check)."""
        entry = self._entries[ep_id]
        if error is not None:
            entry.last_error = error
        if entry.state != "ejected":
            self._eject(entry, now)

    def _eject(self, entry: _Entry, now: float) -> None:
        was_probing = entry.state == "probing"
        if not was_probing and entry.ejections and now - entry.rejoined_at >= self.max_backoff:
            entry.level = 0  # it stayed healthy long enough: forget earlier ejections
        delay = min(self.max_backoff, self.base_backoff * (2.0**entry.level))
        entry.level += 1
        entry.state = "ejected"
        entry.ejected_until = now + delay
        if not was_probing:
            entry.ejections += 1
        self._rebuild()

    def next_probe_at(self) -> float:
        """When the earliest ejected endpoint becomes due for a probe (inf if none)."""
        return self._next_probe_at

    def due_probes(self, now: float) -> list[int]:
        """Ids of ejected endpoints whose backoff has run out (cheap when none is due)."""
        if now < self._next_probe_at:
            return []
        return [e.id for e in self._order if e.state == "ejected" and e.ejected_until <= now]

    def start_probe(self, ep_id: int) -> bool:
        """Move a due endpoint to ``probing`` (one trial at a time); False if not due."""
        entry = self._entries.get(ep_id)
        if entry is None or entry.removed or entry.state != "ejected":
            return False
        entry.state = "probing"
        self._rebuild()
        return True

    # -- inspection -----------------------------------------------------------------------
    def snapshot(self, ep_id: int, now: float) -> EndpointSnapshot:
        """The current view of one endpoint."""
        e = self._entries[ep_id]
        return EndpointSnapshot(
            id=e.id,
            name=e.name,
            weight=e.weight,
            state=e.state,
            in_use=e.in_use,
            errors_total=e.errors,
            consecutive_failures=max(e.create_streak, e.check_streak),
            ejections_total=e.ejections,
            ejected_for_s=max(0.0, e.ejected_until - now) if e.state == "ejected" else None,
            last_error=e.last_error,
            draining=e.removed,
        )

    def snapshots(self, now: float) -> list[EndpointSnapshot]:
        """Views of every endpoint in rotation, in priority order."""
        return [self.snapshot(e.id, now) for e in self._order]

    def last_errors(self, ids: Sequence[int] | None = None) -> list[tuple[str, EndpointState, str]]:
        """``(name, state, last error)`` for each endpoint, for error messages."""
        chosen = [self._entries[i] for i in ids] if ids is not None else self._order
        return [(e.name, e.state, e.last_error or "no error recorded") for e in chosen]
