"""``poolkit demo``: workers sharing a few real SQLite and HTTP connections, shown live."""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from poolkit import Pool
from poolkit.cli._server import EmbeddedHTTPServer

__all__ = ["run_demo"]


@dataclass
class _Board:
    """Who holds what: shared by the workers and the live display."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    holders: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    uses: dict[tuple[str, int], int] = field(default_factory=dict)
    waiting: dict[str, dict[str, float]] = field(default_factory=dict)
    max_wait: dict[str, float] = field(default_factory=dict)
    ordinals: dict[tuple[str, int], int] = field(default_factory=dict)
    done: int = 0

    def label(self, pool: str, rid: int) -> str:
        """``db-conn-2``: numbered per pool, in the order the connections were first seen."""
        with self.lock:
            n = self.ordinals.get((pool, rid))
            if n is None:
                n = self.ordinals[(pool, rid)] = 1 + sum(1 for p, _ in self.ordinals if p == pool)
        return f"{pool}-conn-{n}"

    def wait(self, pool: str, worker: str) -> float:
        now = time.monotonic()
        with self.lock:
            self.waiting.setdefault(pool, {})[worker] = now
        return now

    def got(self, pool: str, rid: int, worker: str, since: float) -> float:
        now = time.monotonic()
        with self.lock:
            self.waiting.get(pool, {}).pop(worker, None)
            self.holders[(pool, rid)] = (worker, now)
            self.uses[(pool, rid)] = self.uses.get((pool, rid), 0) + 1
            self.max_wait[pool] = max(self.max_wait.get(pool, 0.0), now - since)
        return now - since

    def returned(self, pool: str, rid: int) -> None:
        with self.lock:
            self.holders.pop((pool, rid), None)


def _render(board: _Board, pools: list[Pool[Any]], total: int) -> Group:
    table = Table(title="who holds what", title_justify="left")
    table.add_column("pool")
    table.add_column("connection")
    table.add_column("held by")
    table.add_column("for", justify="right")
    table.add_column("uses", justify="right")
    now = time.monotonic()
    with board.lock:
        keys = sorted(board.uses, key=lambda k: (k[0], board.ordinals.get(k, 0)))
        holders = dict(board.holders)
        uses = dict(board.uses)
        waiting = {k: sorted(v) for k, v in board.waiting.items()}
        done = board.done
    for key in keys:
        pool, rid = key
        holder = holders.get(key)
        table.add_row(
            pool,
            board.label(pool, rid),
            Text(holder[0], style="bold green") if holder else Text("idle", style="dim"),
            f"{now - holder[1]:.1f}s" if holder else "",
            str(uses.get(key, 0)),
        )
    lines: list[RenderableType] = [table]
    for p in pools:
        s = p.stats()
        names = ", ".join(waiting.get(p.name, [])) or "nobody"
        lines.append(
            Text(
                f"{p.name}: {s.in_use}/{s.max_size} in use, waiting: {names}",
                style="yellow" if waiting.get(p.name) else "",
            )
        )
    lines.append(Text(f"workers finished: {done}/{total}", style="dim"))
    return Group(*lines)


def _stats_table(pools: list[Pool[Any]], board: _Board) -> Table:
    table = Table(title="final pool statistics", title_justify="left")
    for col in (
        "pool",
        "size",
        "created",
        "borrows",
        "waited",
        "wait avg/max",
        "timeouts",
        "health",
    ):
        table.add_column(col, justify="left" if col in ("pool", "health") else "right")
    for p in pools:
        s = p.stats()
        avg = s.wait_time_total_s / s.waited_total * 1000 if s.waited_total else 0.0
        table.add_row(
            p.name,
            str(s.max_size),
            str(s.created_total),
            str(s.acquired_total),
            str(s.waited_total),
            f"{avg:.0f}/{board.max_wait.get(p.name, 0.0) * 1000:.0f} ms",
            str(s.timeouts_total),
            p.health().status,
        )
    return table


def run_demo(args: argparse.Namespace) -> int:
    """Run ``poolkit demo``; returns the exit code."""
    speed = float(args.speed)
    rounds = int(args.rounds)
    console = Console()
    rng = random.Random()
    workdir = tempfile.mkdtemp(prefix="poolkit-demo-")
    path = os.path.join(workdir, "demo.db")
    setup = sqlite3.connect(path)
    try:
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE visits (worker TEXT, conn INTEGER, at REAL)")
        setup.commit()
    finally:
        setup.close()

    board = _Board()
    server = EmbeddedHTTPServer(work_s=0.0, setup_s=0.003).start()
    db: Pool[sqlite3.Connection] = Pool(
        lambda: sqlite3.connect(path, check_same_thread=False, timeout=5.0),
        destroy=lambda c: c.close(),
        min_size=3,
        max_size=3,
        acquire_timeout=5.0,
        name="db",
    )
    web: Pool[http.client.HTTPConnection] = Pool(
        lambda: http.client.HTTPConnection(server.host, server.port, timeout=10),
        destroy=lambda c: c.close(),
        is_broken=lambda c, exc: exc is not None,
        min_size=2,
        max_size=2,
        acquire_timeout=3.0,
        name="http",
    )
    pools: list[Pool[Any]] = [db, web]
    errors: list[str] = []

    def say(text: str) -> None:
        live.console.print(text, highlight=False)

    def db_worker(n: int) -> None:
        me = f"worker {n}"
        for _ in range(rounds):
            since = board.wait("db", me)
            lease = db.acquire()
            with lease as conn:
                waited = board.got("db", lease.id, me, since)
                say(f"db   {me} uses {board.label('db', lease.id)} (waited {waited:.2f}s)")
                conn.execute("INSERT INTO visits VALUES (?, ?, ?)", (me, lease.id, time.time()))
                conn.commit()
                time.sleep(rng.uniform(0.5, 1.5) / speed)  # the seed's "database work"
                board.returned("db", lease.id)

    def http_worker(n: int) -> None:
        me = f"worker {n}"
        for _ in range(rounds):
            since = board.wait("http", me)
            lease = web.acquire()
            with lease as conn:
                waited = board.got("http", lease.id, me, since)
                say(f"http {me} uses {board.label('http', lease.id)} (waited {waited:.2f}s)")
                ms = rng.uniform(300, 1100) / speed  # the seed's request time, served for real
                conn.request("GET", f"/work?ms={ms:.0f}")
                conn.getresponse().read()
                board.returned("http", lease.id)

    def run(fn: Any, n: int) -> None:
        try:
            fn(n)
        except Exception as exc:
            errors.append(f"worker {n}: {type(exc).__name__}: {exc}")
        finally:
            with board.lock:
                board.done += 1

    threads = [
        threading.Thread(target=run, args=(db_worker, i), daemon=True) for i in (1, 2, 3, 4, 5)
    ]
    threads += [
        threading.Thread(target=run, args=(http_worker, i), daemon=True) for i in (1, 2, 3, 4)
    ]
    try:
        db.open(wait=True)
        web.open(wait=True)
        console.print(
            "[bold]poolkit demo[/]: 5 workers share 3 SQLite connections, "
            "4 workers share 2 keep-alive HTTP connections"
        )
        with Live(
            _render(board, pools, len(threads)), console=console, refresh_per_second=8
        ) as live:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60.0 * rounds
            for t in threads:
                while t.is_alive() and time.monotonic() < deadline:
                    t.join(0.1)
                    live.update(_render(board, pools, len(threads)))
            live.update(_render(board, pools, len(threads)))
        console.print()
        console.print(_stats_table(pools, board))
        with db.acquire() as conn:
            rows = conn.execute("SELECT count(*) FROM visits").fetchone()[0]
        console.print(
            f"the database recorded {rows} visits over {db.stats().created_total} connections; "
            f"the HTTP server saw {server.requests} requests over {server.connections} connections"
        )
    finally:
        db.close()
        web.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for line in errors:
        console.print(f"[red]{line}[/]")
    return 1 if errors else 0
