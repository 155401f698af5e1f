"""Shared, I/O-free parts of the Redis budget: config, tokens, script replies, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from poolkit.errors import PoolError

log = logging.getLogger("poolkit.cluster")

Mode = Literal["strict", "degraded"]

#: Shortest BLPOP block we send (Redis reads a timeout of 0 as "block forever").
MIN_BLOCK_S = 0.01
#: Waiting for a free slot: the first poll/block, doubling up to the cap.
POLL_START_S = 0.02
POLL_CAP_S = 0.5


class BudgetExhausted(PoolError):
    """No lease could be granted before the timeout: the fleet-wide budget is full.

    Attributes name the budget, its limit, the holders seen and why the last attempt was
    refused (``"full"``, ``"max"`` = this process is at ``max_per_process``, ``"reserved"`` =
    the free slots are reserved for other processes' ``min_per_process``, ``"quiet"`` = the
    budget waits for holders to re-register after Redis lost its data).

    Example::

        try:
            token = budget.acquire(timeout=1.0)
        except BudgetExhausted as e:
            print(e.limit, e.holders)
    """

    def __init__(
        self,
        name: str,
        limit: int,
        reason: str,
        *,
        count: int,
        mine: int,
        waited_s: float,
        holders: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.limit = limit
        self.reason = reason
        self.count = count
        self.mine = mine
        self.waited_s = waited_s
        self.holders = dict(holders or {})
        why = {
            "full": "the budget is full",
            "max": "this process holds max_per_process leases",
            "reserved": "the free leases are reserved for other processes (min_per_process)",
            "quiet": "Redis lost its data; no new leases until holders re-register",
        }.get(reason, reason)
        top = sorted(self.holders.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{p}={n}" for p, n in top[:5])
        if len(top) > 5:
            shown += f", ... ({len(top) - 5} more)"
        super().__init__(
            f"budget {name!r}: no lease after {waited_s:.3f} s: {why} "
            f"({count}/{limit} leases held, {mine} by this process"
            + (f"; holders: {shown}" if shown else "")
            + "); raise the limit, lower max_size or the number of processes, "
            "or wait longer"
        )


class BudgetUnavailable(PoolError):
    """Redis cannot be reached and the budget refuses to grow (``mode="strict"``, or the
    local ``fallback_limit`` of ``mode="degraded"`` is used up).

    Resources that already exist keep serving; only creating new ones is refused.

    Example::

        try:
            token = budget.acquire(timeout=1.0)
        except BudgetUnavailable:
            ...  # the pool retries creation with backoff while callers still wait
    """

    def __init__(self, name: str, mode: str, error: BaseException | None, detail: str) -> None:
        self.name = name
        self.mode = mode
        self.error = error
        err = f"{type(error).__name__}: {error}" if error is not None else "unreachable"
        super().__init__(f"budget {name!r}: Redis unavailable ({err}); mode={mode!r} {detail}")


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetToken:
    """One lease of a Redis budget, returned by ``acquire`` and given back to ``release``.

    ``fence`` is the fencing token: it increases with every grant of the budget, also across
    a Redis restart that lost the data (it is seeded from the server clock), so a resource can
    reject an older holder. ``fence`` is ``None`` for a lease granted locally while Redis was
    unreachable (``mode="degraded"``).

    Example::

        token = budget.acquire(timeout=5)
        print(token.fence)
        budget.release(token)
    """

    budget: str
    member: str
    fence: int | None
    epoch: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetInfo:
    """A snapshot of a budget object's state (``budget.info()``), for stats and metrics.

    Example::

        info = budget.info()
        print(info.status, info.held, info.server_count, info.limit)
    """

    name: str
    limit: int
    mode: str
    status: str
    held: int
    local_held: int
    server_count: int | None
    epoch: int | None
    restarts_detected: int
    grants_total: int
    local_grants_total: int
    refusals_total: int
    renewals_total: int
    renew_failures_total: int
    readded_total: int
    last_error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Validated settings of one budget (shared by the sync and async shells)."""

    name: str
    limit: int
    lease_ttl: float
    renew_interval: float
    min_per_process: int
    max_per_process: int
    mode: Mode
    fallback_limit: int
    restart_quiet: float
    socket_timeout: float
    key_prefix: str

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.lease_ttl * 1000))

    @property
    def quiet_ms(self) -> int:
        return max(0, round(self.restart_quiet * 1000))

    def keys(self) -> list[str]:
        tag = f"{{{self.key_prefix}:{self.name}}}"
        return [
            f"{tag}:holders",
            f"{tag}:counts",
            f"{tag}:procs",
            f"{tag}:meta",
            f"{tag}:wake",
            f"{tag}:waiting",
        ]


def make_config(
    *,
    name: str,
    limit: int,
    lease_ttl: float,
    renew_interval: float | None,
    min_per_process: int | None,
    max_per_process: int | None,
    mode: str,
    fallback_limit: int | None,
    restart_quiet: float | None,
    socket_timeout: float | None,
    key_prefix: str,
) -> Config:
    """Validate the constructor arguments; every error names the bad value."""
    if not isinstance(name, str) or not name or any(c in name for c in "{}#"):
        raise ValueError(f"name ({name!r}) must be a non-empty string without '{{', '}}' or '#'")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit ({limit!r}) must be an int >= 1")
    if not lease_ttl > 0:
        raise ValueError(f"lease_ttl ({lease_ttl!r}) must be > 0 seconds")
    if renew_interval is None:
        renew_interval = lease_ttl / 4
    if not 0 < renew_interval <= lease_ttl / 2:
        raise ValueError(
            f"renew_interval ({renew_interval!r}) must be > 0 and <= lease_ttl / 2 "
            f"({lease_ttl / 2!r}) so that one missed renewal does not lose the leases"
        )
    min_per = 0 if min_per_process is None else min_per_process
    if min_per < 0 or min_per > limit:
        raise ValueError(f"min_per_process ({min_per_process!r}) must be >= 0 and <= limit")
    max_per = 0 if max_per_process is None else max_per_process
    if max_per_process is not None and not 1 <= max_per <= limit:
        raise ValueError(f"max_per_process ({max_per_process!r}) must be >= 1 and <= limit")
    if max_per and min_per > max_per:
        raise ValueError(
            f"min_per_process ({min_per}) must be <= max_per_process ({max_per_process})"
        )
    if mode not in ("strict", "degraded"):
        raise ValueError(f"mode ({mode!r}) must be 'strict' or 'degraded'")
    if mode == "degraded":
        if fallback_limit is None:
            raise ValueError(
                "mode='degraded' needs fallback_limit: the most leases this process may "
                "hold while Redis is unreachable"
            )
        if fallback_limit < 0:
            raise ValueError(f"fallback_limit ({fallback_limit!r}) must be >= 0")
    quiet = lease_ttl if restart_quiet is None else restart_quiet
    if quiet < 0:
        raise ValueError(f"restart_quiet ({restart_quiet!r}) must be >= 0 seconds")
    if socket_timeout is None:
        socket_timeout = max(0.5, min(2.0, renew_interval))
    if not socket_timeout > 0:
        raise ValueError(f"socket_timeout ({socket_timeout!r}) must be > 0 seconds")
    if not key_prefix or any(c in key_prefix for c in "{}"):
        raise ValueError(f"key_prefix ({key_prefix!r}) must be non-empty, without braces")
    return Config(
        name=name,
        limit=limit,
        lease_ttl=float(lease_ttl),
        renew_interval=float(renew_interval),
        min_per_process=min_per,
        max_per_process=max_per,
        mode="degraded" if mode == "degraded" else "strict",
        fallback_limit=int(fallback_limit or 0),
        restart_quiet=float(quiet),
        socket_timeout=float(socket_timeout),
        key_prefix=key_prefix,
    )


def new_proc_id() -> str:
    """A process identity unique in the fleet: host, pid and a random suffix."""
    host = socket.gethostname().replace("#", "_") or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _int(v: object) -> int:
    if isinstance(v, bytes):
        return int(v)
    if isinstance(v, (int, str)):
        return int(v)
    raise TypeError(f"unexpected reply item {v!r}")


def _str(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    fence: int
    epoch: int
    now_ms: int
    expiry_ms: int
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    count: int
    mine: int
    wait_ms: int
    epoch: int


def parse_acquire(reply: object) -> Grant | Refusal:
    """Turn the acquire script's reply into a ``Grant`` or a ``Refusal``."""
    if not isinstance(reply, list) or len(reply) != 6:
        raise TypeError(f"unexpected acquire reply {reply!r}")
    if reply[0] == 1:  # integers arrive as int
        return Grant(reply[1], reply[2], reply[3], reply[4], reply[5])
    return Refusal(_str(reply[1]), _int(reply[2]), _int(reply[3]), _int(reply[4]), _int(reply[5]))


@dataclasses.dataclass(frozen=True, slots=True)
class Renewal:
    epoch: int
    fresh: bool
    now_ms: int
    expiry_ms: int
    count: int
    quiet_until_ms: int
    missing: tuple[str, ...]


def parse_renew(reply: object) -> Renewal:
    """Turn the renew script's reply into a ``Renewal``."""
    if not isinstance(reply, list) or len(reply) < 6:
        raise TypeError(f"unexpected renew reply {reply!r}")
    return Renewal(
        epoch=_int(reply[0]),
        fresh=_int(reply[1]) == 1,
        now_ms=_int(reply[2]),
        expiry_ms=_int(reply[3]),
        count=_int(reply[4]),
        quiet_until_ms=_int(reply[5]),
        missing=tuple(_str(m) for m in reply[6:]),
    )


def acquire_args(cfg: Config, proc: str) -> list[str | int]:
    return [
        proc,
        cfg.limit,
        cfg.ttl_ms,
        cfg.min_per_process,
        cfg.max_per_process,
        cfg.quiet_ms,
        cfg.ttl_ms,
    ]


def renew_args(cfg: Config, proc: str, members: Sequence[str]) -> list[str | int]:
    return [proc, cfg.ttl_ms, cfg.ttl_ms, cfg.quiet_ms, *members]


def release_args(cfg: Config, proc: str, members: Sequence[str]) -> list[str | int]:
    return [proc, cfg.limit, *members]


def decode_holders(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    """HGETALL of the counts hash -> {proc: leases}."""
    return {_str(k): _int(v) for k, v in raw.items()}


class BudgetState:
    """The I/O-free half of ``RedisBudget`` and ``AsyncRedisBudget``: this holder's identity,
    its leases, its counters and status, and what to make of the scripts' replies.

    The shells do the Redis calls. ``_lock`` guards ``_held``: a ``threading.Lock`` in the
    thread shell, a no-op context in the asyncio one (one event loop).
    """

    _cfg: Config
    _lock: contextlib.AbstractContextManager[Any]

    def _reset_state(self) -> None:
        """A new holder: fresh identity, no leases, zeroed counters (at start, after fork)."""
        self._proc = new_proc_id()
        self._acquire_argv = acquire_args(self._cfg, self._proc)
        self._held: dict[str, BudgetToken] = {}
        self._local_seq = 0
        self._reachable = True
        self._last_error: str | None = None
        self._epoch: int | None = None
        self._server_count: int | None = None
        self._restarts = 0
        self._grants = 0
        self._local_grants = 0
        self._refusals = 0
        self._renewals = 0
        self._renew_failures = 0
        self._readded = 0
        self._over_limit = False

    @property
    def name(self) -> str:
        """The budget's name (shared by every process using it)."""
        return self._cfg.name

    @property
    def limit(self) -> int:
        """The most leases the whole fleet may hold."""
        return self._cfg.limit

    @property
    def process_id(self) -> str:
        """This holder's identity in Redis (``host:pid:random``)."""
        return self._proc

    def status(self) -> str:
        """``"ok"`` (Redis reachable), ``"degraded"`` (unreachable, growing up to the local
        ``fallback_limit``) or ``"unavailable"`` (unreachable, growing refused)."""
        if self._reachable:
            return "ok"
        return "degraded" if self._cfg.mode == "degraded" else "unavailable"

    def info(self) -> BudgetInfo:
        """A snapshot of this budget object's state and counters."""
        with self._lock:
            held = len(self._held)
            local = sum(1 for t in self._held.values() if t.fence is None)
        return BudgetInfo(
            name=self._cfg.name,
            limit=self._cfg.limit,
            mode=self._cfg.mode,
            status=self.status(),
            held=held,
            local_held=local,
            server_count=self._server_count,
            epoch=self._epoch,
            restarts_detected=self._restarts,
            grants_total=self._grants,
            local_grants_total=self._local_grants,
            refusals_total=self._refusals,
            renewals_total=self._renewals,
            renew_failures_total=self._renew_failures,
            readded_total=self._readded,
            last_error=self._last_error,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._cfg.name!r} limit={self._cfg.limit} "
            f"held={len(self._held)} status={self.status()!r}>"
        )

    def _granted(self, g: Grant) -> BudgetToken:
        token = BudgetToken(self._cfg.name, f"{self._proc}#{g.fence}", g.fence, g.epoch)
        with self._lock:
            self._held[token.member] = token
            self._grants += 1
        self._server_count = g.count
        if self._epoch is None:
            self._epoch = g.epoch
        return token

    def _local_grant(self, error: BaseException) -> BudgetToken:
        """Redis is unreachable: a local lease (``mode="degraded"``) or ``BudgetUnavailable``."""
        cfg = self._cfg
        if cfg.mode == "strict":
            self._refusals += 1
            raise BudgetUnavailable(
                cfg.name, "strict", error, "refuses new leases; existing resources keep serving"
            ) from error
        with self._lock:
            if len(self._held) >= cfg.fallback_limit:
                self._refusals += 1
                raise BudgetUnavailable(
                    cfg.name,
                    "degraded",
                    error,
                    f"and this process already holds {len(self._held)} leases "
                    f"(fallback_limit={cfg.fallback_limit})",
                ) from error
            self._local_seq += 1
            token = BudgetToken(cfg.name, f"{self._proc}#L{self._local_seq}", None, None)
            self._held[token.member] = token
            self._local_grants += 1
        return token

    def _refused(
        self, r: Refusal, waited: float, holders: dict[str, int] | None
    ) -> BudgetExhausted:
        self._refusals += 1
        return BudgetExhausted(
            self._cfg.name,
            self._cfg.limit,
            r.reason,
            count=r.count,
            mine=r.mine,
            waited_s=waited,
            holders=holders,
        )

    def _renewed(self, r: Renewal) -> list[str]:
        """Take in a renewal; returns the re-added members released meanwhile (to remove)."""
        self._renewals += 1
        self._server_count = r.count
        if self._epoch is not None and r.epoch != self._epoch:
            self._restarts += 1
            log.warning(
                "budget %r: Redis lost the budget's data (epoch %s -> %s); re-registered %d "
                "leases; new grants pause for %.3f s",
                self._cfg.name,
                self._epoch,
                r.epoch,
                len(r.missing),
                max(0, r.quiet_until_ms - r.now_ms) / 1000,
            )
        self._epoch = r.epoch
        gone: list[str] = []
        if r.missing:
            self._readded += len(r.missing)
            with self._lock:
                gone = [m for m in r.missing if m not in self._held]
        over = r.count > self._cfg.limit
        if over and not self._over_limit:  # once per episode, not every interval
            log.warning(
                "budget %r: over the limit (%d/%d leases) after re-registration; no new "
                "leases until enough are released",
                self._cfg.name,
                r.count,
                self._cfg.limit,
            )
        self._over_limit = over
        return gone

    def _mark_down(self, error: BaseException, during: str) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        if self._reachable:
            self._reachable = False
            log.warning(
                "budget %r: Redis unreachable during %s (%s); mode=%r: existing resources keep "
                "serving, %s",
                self._cfg.name,
                during,
                self._last_error,
                self._cfg.mode,
                "growing is refused"
                if self._cfg.mode == "strict"
                else f"growing is allowed up to fallback_limit={self._cfg.fallback_limit}",
            )

    def _release_failed(self, error: BaseException, count: int) -> None:
        """A release could not reach Redis: warn once per outage, then only at debug level."""
        was_reachable = self._reachable
        self._mark_down(error, "release")
        log.log(
            logging.WARNING if was_reachable else logging.DEBUG,
            "budget %r: could not release %d lease(s) (%s); they expire on the server "
            "within lease_ttl=%.3f s",
            self._cfg.name,
            count,
            error,
            self._cfg.lease_ttl,
        )

    def _mark_up(self) -> None:
        if not self._reachable:
            self._reachable = True
            log.info("budget %r: Redis reachable again", self._cfg.name)
