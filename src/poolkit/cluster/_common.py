"""Shared, I/O-free parts of the Redis budget: config, tokens, script replies, errors."""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

from poolkit.errors import PoolError

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
