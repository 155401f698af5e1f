"""``RedisBudget``: a fleet-wide lease semaphore on Redis for the thread-based ``Pool``."""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolkit.cluster import _scripts
from poolkit.cluster._common import (
    MIN_BLOCK_S,
    POLL_CAP_S,
    POLL_START_S,
    BudgetExhausted,
    BudgetState,
    BudgetToken,
    Config,
    Grant,
    Refusal,
    decode_holders,
    log,
    make_config,
    parse_acquire,
    parse_renew,
    release_args,
    renew_args,
)
from poolkit.errors import PoolClosed

#: Errors that mean "Redis cannot be reached (or cannot take writes) right now".
REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


class RedisBudget(BudgetState):
    """A creation budget shared by every process that uses the same Redis and ``name``.

    At most ``limit`` leases exist fleet-wide; a pool given ``budget=`` takes one before it
    creates a resource and gives it back after destroying it. Leases expire ``lease_ttl``
    seconds after their last renewal (by the Redis server's clock); one background thread
    renews all of this process's leases in one call every ``renew_interval``.

    Example::

        from poolkit import Pool
        from poolkit.cluster import RedisBudget

        budget = RedisBudget("redis://127.0.0.1:6379/0", "orders-db", limit=100,
                             lease_ttl=10, max_per_process=20)
        pool = Pool(connect, max_size=20, budget=budget)

    Share one ``RedisBudget`` object between the pools of a process that use the same
    database: each object is one "process" for ``min_per_process``/``max_per_process``.
    """

    def __init__(
        self,
        url: str | redis.Redis,
        name: str,
        limit: int,
        *,
        lease_ttl: float = 10.0,
        renew_interval: float | None = None,
        min_per_process: int | None = None,
        max_per_process: int | None = None,
        mode: str = "strict",
        fallback_limit: int | None = None,
        restart_quiet: float | None = None,
        socket_timeout: float | None = None,
        key_prefix: str = "poolkit:budget",
    ) -> None:
        self._cfg: Config = make_config(
            name=name,
            limit=limit,
            lease_ttl=lease_ttl,
            renew_interval=renew_interval,
            min_per_process=min_per_process,
            max_per_process=max_per_process,
            mode=mode,
            fallback_limit=fallback_limit,
            restart_quiet=restart_quiet,
            socket_timeout=socket_timeout,
            key_prefix=key_prefix,
        )
        cfg = self._cfg
        if isinstance(url, str):
            self._redis: redis.Redis = redis.Redis.from_url(
                url,
                socket_timeout=cfg.socket_timeout + POLL_CAP_S,
                socket_connect_timeout=cfg.socket_timeout,
                retry=Retry(NoBackoff(), 1),
            )
            self._owns_client = True
        elif isinstance(url, redis.Redis):
            self._redis = url
            self._owns_client = False
        else:
            raise TypeError(f"url ({type(url).__name__}) must be a redis:// URL or a redis.Redis")
        self._keys = cfg.keys()
        self._acquire_script = self._redis.register_script(_scripts.ACQUIRE)
        self._renew_script = self._redis.register_script(_scripts.RENEW)
        self._release_script = self._redis.register_script(_scripts.RELEASE)
        self._closed = False
        self._init_process_state()

    # -- process identity (reset after fork) ---------------------------------------------
    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._stop = threading.Event()  # stops the renewer
        self._closing = threading.Event()  # interrupts waits in acquire()
        self._thread: threading.Thread | None = None
        self._reset_state()

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # forked: the child is a new holder with no leases
            self._init_process_state()

    # -- public API ----------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> BudgetToken:
        """Take one lease, waiting up to ``timeout`` seconds (``None``: no limit).

        Raises ``BudgetExhausted`` when none is free in time, ``BudgetUnavailable`` when
        Redis is unreachable and the mode refuses to grow, ``PoolClosed`` after ``close()``.
        """
        self._check_process()
        if self._closed:
            raise PoolClosed(f"budget {self._cfg.name!r} is closed")
        self._ensure_renewer()
        cfg = self._cfg
        start = time.monotonic()
        deadline = None if timeout is None else start + max(0.0, timeout)
        delay = POLL_START_S
        last: Refusal | None = None
        while True:
            if cfg.max_per_process:
                with self._lock:
                    at_max = len(self._held) >= cfg.max_per_process
                    mine = len(self._held)
                if at_max:
                    wait = self._remaining(deadline, POLL_CAP_S)
                    if wait <= 0:
                        r = last or Refusal("max", self._server_count or 0, mine, 0, 0)
                        raise self._exhausted(r, time.monotonic() - start)
                    with self._freed:
                        if len(self._held) >= cfg.max_per_process:
                            self._freed.wait(wait)
                    continue
            try:
                reply = self._acquire_script(keys=self._keys, args=self._acquire_argv)
            except REDIS_DOWN as e:
                self._mark_down(e, "acquire")
                return self._local_grant(e)
            self._mark_up()
            res = parse_acquire(reply)
            if isinstance(res, Grant):
                token = self._granted(res)
                if self._closed:  # closed while the script ran: do not leak the lease
                    self.release(token)
                    raise PoolClosed(f"budget {cfg.name!r} is closed")
                return token
            last = res
            remaining = self._remaining(deadline, 3600.0)
            if remaining <= 0:
                raise self._exhausted(res, time.monotonic() - start)
            if res.reason == "quiet":
                self._closing.wait(min(remaining, res.wait_ms / 1000 + 0.005))
            elif res.reason == "max":
                with self._freed:
                    self._freed.wait(min(remaining, delay))
            else:
                self._block_for_wake(min(remaining, delay))
            delay = min(delay * 2, POLL_CAP_S)
            if self._closed:
                raise PoolClosed(f"budget {cfg.name!r} is closed")

    def release(self, token: object) -> None:
        """Give a lease back. Never raises for Redis trouble: a lease that cannot be removed
        is logged and simply expires on the server after ``lease_ttl``."""
        if not isinstance(token, BudgetToken) or token.budget != self._cfg.name:
            raise ValueError(f"budget {self._cfg.name!r}: {token!r} is not one of its tokens")
        self._check_process()
        with self._freed:
            present = self._held.pop(token.member, None)
            self._freed.notify()
        if present is None:
            return  # already released, or leased before a fork
        self._remove_on_server([token.member])

    def holders(self) -> dict[str, int]:
        """Leases per process as Redis sees them now (one HGETALL; raises Redis errors)."""
        raw = self._redis.hgetall(self._keys[1])
        return decode_holders(raw)

    def renew(self) -> None:
        """Renew every lease of this process in ONE script call now (the background thread
        calls this every ``renew_interval``). Leases Redis lost are re-added. Never raises
        for Redis trouble."""
        self._check_process()
        with self._lock:
            members = list(self._held)
        try:
            reply = self._renew_script(
                keys=self._keys, args=renew_args(self._cfg, self._proc, members)
            )
        except REDIS_DOWN as e:
            self._renew_failures += 1
            self._mark_down(e, "renew")
            return
        except redis.RedisError as e:
            self._renew_failures += 1
            log.error("budget %r: renew failed: %s", self._cfg.name, e)
            return
        self._mark_up()
        gone = self._renewed(parse_renew(reply))
        if gone:  # released while the renewal was in flight: remove them again
            self._remove_on_server(gone)

    def close(self) -> None:
        """Stop renewing, give back every lease still held, close the Redis client (if this
        object created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._closing.set()
        with self._freed:
            self._freed.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=self._cfg.socket_timeout * 2 + 1)
        with self._lock:
            members = list(self._held)
            self._held.clear()
        if members and self._pid == os.getpid():
            self._remove_on_server(members)
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> RedisBudget:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    @staticmethod
    def _remaining(deadline: float | None, cap: float) -> float:
        if deadline is None:
            return cap
        return min(cap, deadline - time.monotonic())

    def _exhausted(self, r: Refusal, waited: float) -> BudgetExhausted:
        holders: dict[str, int] | None = None
        try:
            holders = self.holders()
        except (redis.RedisError, OSError):
            holders = None
        return self._refused(r, waited, holders)

    def _block_for_wake(self, seconds: float) -> None:
        try:
            self._redis.blpop([self._keys[4]], timeout=max(MIN_BLOCK_S, seconds))
        except REDIS_DOWN as e:
            self._mark_down(e, "wait")

    def _remove_on_server(self, members: list[str]) -> None:
        try:
            self._release_script(keys=self._keys, args=release_args(self._cfg, self._proc, members))
        except REDIS_DOWN as e:
            self._release_failed(e, len(members))
        except redis.RedisError as e:
            log.error("budget %r: release failed: %s", self._cfg.name, e)
        else:
            self._mark_up()

    def _ensure_renewer(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            t = threading.Thread(
                target=self._run, name=f"poolkit-budget-{self._cfg.name}", daemon=True
            )
            self._thread = t
        t.start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self._cfg.renew_interval):
            try:
                self.renew()
            except Exception:  # never let the renewer die
                log.exception("budget %r: unexpected error while renewing", self._cfg.name)
