"""A DuckDB-backed HTTP service: one database file, a pool of connections, many threads.

DuckDB lets one process open a database file read-write. ``poolkit.db.DBPool`` opens it
once and pools *duplicate connections* of that instance (``db.cursor()``), so every request
thread gets its own connection (its own transaction) and readers and writers work on the
one file at the same time.

The service (stdlib ``ThreadingHTTPServer`` on loopback):

* ``POST /events`` with ``{"kind": "...", "value": 1.5}`` appends an event (a writer);
* ``GET /stats`` returns the count and average per kind (a reader, an aggregate query);
* ``GET /pool`` returns the pool's live counters.

Run it: ``python examples/duckdb_service.py`` starts the server, drives it with concurrent
writer and reader clients, prints what it saw, and stops. ``--serve`` keeps it running.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from poolkit.db import DBPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id BIGINT PRIMARY KEY,
    kind VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
)
"""


class EventService:
    """The service's data layer: every method borrows one pooled DuckDB connection."""

    def __init__(self, path: Path, max_size: int = 8) -> None:
        self.db = DBPool.from_url(f"duckdb:///{path}", max_size=max_size, acquire_timeout=10)
        self.db.execute(SCHEMA)
        self.db.execute("CREATE SEQUENCE IF NOT EXISTS event_ids")

    def record(self, kind: str, value: float) -> int:
        """Append one event in its own transaction; returns its id."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "INSERT INTO events (id, kind, value) VALUES (nextval('event_ids'), ?, ?) "
                "RETURNING id",
                (kind, value),
            ).fetchone()
        return int(row[0])

    def stats(self) -> dict[str, Any]:
        """Count and average per kind (runs beside the writers, on its own connection)."""
        rows = self.db.fetchall(
            "SELECT kind, count(*), round(avg(value), 3) FROM events GROUP BY kind ORDER BY kind"
        )
        return {kind: {"count": n, "avg": avg} for kind, n, avg in rows}

    def close(self) -> None:
        """Close the pool and the database instance."""
        self.db.close()


def make_handler(service: EventService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if self.path != "/events":
                self._send(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            try:
                event = json.loads(self.rfile.read(length))
                new_id = service.record(str(event["kind"]), float(event["value"]))
            except (KeyError, ValueError, TypeError) as exc:
                self._send(400, {"error": f"bad event: {exc}"})
                return
            self._send(201, {"id": new_id})

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._send(200, service.stats())
            elif self.path == "/pool":
                self._send(200, asdict(service.db.stats()))
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, format: str, *args: Any) -> None:  # keep the demo quiet
            return

    return Handler


def drive(base: str, writers: int, readers: int, requests: int) -> dict[str, int]:
    """Concurrent clients: writers POST events while readers GET /stats."""
    kinds = ["click", "view", "buy"]
    seen = {"written": 0, "reads": 0}
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(requests):
            body = json.dumps({"kind": rng.choice(kinds), "value": rng.random() * 10}).encode()
            req = urllib.request.Request(
                f"{base}/events", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 201
            with lock:
                seen["written"] += 1

    def reader(_: int) -> None:
        for _ in range(requests):
            with urllib.request.urlopen(f"{base}/stats", timeout=30) as resp:
                json.loads(resp.read())
            with lock:
                seen["reads"] += 1

    with ThreadPoolExecutor(max_workers=writers + readers) as ex:
        futures = [ex.submit(writer, i) for i in range(writers)]
        futures += [ex.submit(reader, i) for i in range(readers)]
        for f in futures:
            f.result()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DuckDB-backed service on a poolkit DBPool")
    parser.add_argument("--db", type=Path, default=None, help="database file (default: a temp)")
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "events.duckdb"
        service = EventService(path, max_size=args.pool_size)
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
        base = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            if args.serve:
                print(f"serving on {base} (POST /events, GET /stats, GET /pool); Ctrl-C stops")
                threading.Event().wait()
            seen = drive(base, args.writers, args.readers, args.requests)
            stats = service.stats()
            total = sum(v["count"] for v in stats.values())
            pool = service.db.stats()
            print(f"writes: {seen['written']}, reads: {seen['reads']}, events stored: {total}")
            print(f"per kind: {stats}")
            print(
                f"pool: size={pool.size}/{pool.max_size} created={pool.created_total} "
                f"borrows={pool.acquired_total} waited={pool.waited_total} "
                f"timeouts={pool.timeouts_total}"
            )
            if total != seen["written"]:
                print(f"MISMATCH: {total} stored for {seen['written']} writes")
                return 1
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
            service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
