"""What ``poolkit bench`` can measure: a database, an HTTP server, or the embedded default.

A target knows how to open a connection, run one request on it and close it; the bench puts
those three steps in a ``poolkit.Pool`` (pooled) or a ``poolkit.NullPool`` (unpooled).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import shutil
import sqlite3
import ssl
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from poolkit import NullPool, Pool
from poolkit.cli._errors import CLIError
from poolkit.cli._server import EmbeddedHTTPServer

__all__ = [
    "DatabaseTarget",
    "HTTPTarget",
    "Target",
    "embedded_targets",
    "parse_target",
    "redact_url",
]

DB_SCHEMES = ("sqlite", "sqlite3", "duckdb", "postgresql", "postgres", "mysql", "mariadb")


# ``user:password@`` in text that is not a well-formed URL (``postgresql:/u:pw@h``, ``u:pw@h``).
_LOOSE_USERINFO = re.compile(r":[^@\s]*@")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; in text that is not a ``scheme://`` URL,
    everything between a ``:`` and an ``@`` is masked."""
    if "://" not in url:
        return _LOOSE_USERINFO.sub(":***@", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return url.replace(parts.netloc, f"{user}@{netloc[-1]}", 1)


class Target(ABC):
    """Something to benchmark: open a connection, run one request on it, close it.

    ``open_pool`` builds what the bench borrows from: a ``poolkit.Pool`` (pooled) or a
    ``poolkit.NullPool`` (a new connection per request) over the same factory.

    Example::

        target = parse_target("sqlite:///app.db")
        target.probe()                                   # CLIError if it cannot be reached
        pool, close = target.open_pool(pooled=True, max_size=4, name="bench")
        with pool.acquire() as conn:
            target.request(conn)
        close()
    """

    kind: str = "target"

    def __init__(self, label: str, description: str) -> None:
        self.label = label
        self.description = description

    @abstractmethod
    def request(self, conn: Any) -> None:
        """Run one request on an open connection."""

    @abstractmethod
    def open_pool(
        self, *, pooled: bool, max_size: int, name: str
    ) -> tuple[Pool[Any], Callable[[], None]]:
        """Return the pool to borrow from and the function that closes it."""

    @abstractmethod
    def probe(self) -> None:
        """Open a connection and run one request, turning failure into a one-line CLIError."""

    def cleanup(self) -> None:  # noqa: B027 - most targets hold nothing of their own
        """Release what the target itself holds (temporary files, servers)."""

    def secrets(self) -> tuple[str, ...]:
        """Values never to print (passwords from the URL)."""
        return ()

    def describe_error(self, exc: BaseException) -> str:
        """``exc`` as one line of text, without this target's secrets."""
        return _one_line(exc, self.secrets())


def _one_line(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return text if len(text) <= 300 else text[:297] + "..."


class DatabaseTarget(Target):
    """A database reached through ``poolkit.db``; one request runs ``sql`` and fetches the rows.

    Pooled runs use ``poolkit.db.DBPool`` and unpooled runs a ``poolkit.NullPool`` over the
    same driver factory (``poolkit.db.factory_from_url``), so both pay the same checks and
    resets and differ only in reuse.
    """

    kind = "database"

    def __init__(self, url: str, sql: str | None = None, *, label: str | None = None) -> None:
        from poolkit.db import parse_url

        try:
            self.url = parse_url(url)
        except (TypeError, ValueError) as exc:
            raise CLIError(str(exc)) from None
        if self.url.sync_driver is None:
            raise CLIError(
                f"{self.url.scheme}:// is asyncio-only; use the plain scheme "
                f"(e.g. {self.url.backend}://...) to benchmark it"
            )
        self.sql = sql or "SELECT 1"
        super().__init__(label or str(self.url), f"{self.url.backend}: {self.sql}")

    def secrets(self) -> tuple[str, ...]:
        return self.url.secrets()

    def factory(self) -> Any:
        """A fresh driver factory for this URL."""
        from poolkit.db import factory_from_url

        try:
            return factory_from_url(self.url)
        except ImportError as exc:
            raise CLIError(f"{self.url.backend} targets need a driver: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise CLIError(f"bad database URL {str(self.url)!r}: {exc}") from None

    def params(self) -> tuple[Any, ...] | None:
        """Parameters for the next request's statement (None: the statement takes none)."""
        return None

    def request(self, conn: Any) -> None:
        cur = conn.cursor()
        try:
            params = self.params()
            if params is None:
                cur.execute(self.sql)
            else:
                cur.execute(self.sql, params)
            cur.fetchall()
        finally:
            cur.close()

    def open_pool(
        self, *, pooled: bool, max_size: int, name: str
    ) -> tuple[Pool[Any], Callable[[], None]]:
        from poolkit.db import DBPool

        factory = self.factory()
        if pooled:
            db = DBPool(factory, max_size=max_size, acquire_timeout=30.0, name=name)
            return db.pool, db.close
        null: Pool[Any] = NullPool(factory, max_size=max_size, acquire_timeout=30.0, name=name)

        def close() -> None:
            null.close()
            factory.close()

        return null, close

    def probe(self) -> None:
        factory = self.factory()
        try:
            try:
                conn = factory.create()
            except Exception as exc:
                raise CLIError(
                    f"cannot connect to {self.label}: {self.describe_error(exc)}"
                ) from None
            try:
                self.request(conn)
            except Exception as exc:
                raise CLIError(
                    f"a request to {self.label} failed: {self.describe_error(exc)}"
                ) from None
            finally:
                with contextlib.suppress(Exception):
                    factory.destroy(conn)
        finally:
            with contextlib.suppress(Exception):
                factory.close()


class EmbeddedSQLiteTarget(DatabaseTarget):
    """A temporary SQLite file with a 1,000-row table; one request looks up one row by key."""

    ROWS = 1000

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="poolkit-bench-")
        path = os.path.join(self._dir, "bench.db")
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)"
            )
            conn.executemany(
                "INSERT INTO items VALUES (?, ?, ?)",
                ((i, f"item-{i}", round(i * 0.37, 2)) for i in range(1, self.ROWS + 1)),
            )
            conn.commit()
        finally:
            conn.close()
        super().__init__(
            "sqlite:///" + path,
            "SELECT name, price FROM items WHERE id = ?",
            label="sqlite (embedded, temporary file)",
        )
        self.description = "sqlite: SELECT one of 1,000 rows by primary key"
        self._rand = random.Random(7)

    def params(self) -> tuple[Any, ...] | None:
        return (self._rand.randint(1, self.ROWS),)

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


class HTTPTarget(Target):
    """An HTTP(S) server; a connection is a keep-alive ``http.client`` connection."""

    kind = "http"

    def __init__(self, url: str, *, label: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CLIError(
                f"invalid HTTP URL {redact_url(url)!r}: expected http(s)://host[:port]/path"
            )
        try:
            port = parts.port
        except ValueError:
            raise CLIError(f"invalid port in {redact_url(url)!r}") from None
        self.url = url
        self._password = parts.password
        self.host = parts.hostname
        self.port = port
        self.https = parts.scheme == "https"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._ssl = ssl.create_default_context() if self.https else None
        super().__init__(label or redact_url(url), f"GET {self.path}")

    def secrets(self) -> tuple[str, ...]:
        return (self._password,) if self._password else ()

    def connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=10, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        conn.connect()
        return conn

    def request(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", self.path, headers={"User-Agent": "poolkit-bench"})
        resp = conn.getresponse()
        resp.read()
        if resp.status >= 500:
            raise OSError(f"HTTP {resp.status} {resp.reason}")

    def close(self, conn: http.client.HTTPConnection) -> None:
        conn.close()

    def is_broken(self, conn: Any, exc: BaseException | None) -> bool:
        """Any error, or a server that said ``Connection: close``, ends the connection."""
        # http.client drops the socket when the server said "Connection: close".
        return exc is not None or getattr(conn, "sock", None) is None

    def open_pool(
        self, *, pooled: bool, max_size: int, name: str
    ) -> tuple[Pool[Any], Callable[[], None]]:
        cls = Pool if pooled else NullPool
        pool: Pool[Any] = cls(
            self.connect,
            destroy=self.close,
            is_broken=self.is_broken,
            max_size=max_size,
            acquire_timeout=30.0,
            name=name,
        )
        return pool, pool.close

    def probe(self) -> None:
        try:
            conn = self.connect()
        except Exception as exc:
            raise CLIError(f"cannot connect to {self.label}: {self.describe_error(exc)}") from None
        try:
            self.request(conn)
        except Exception as exc:
            raise CLIError(
                f"a request to {self.label} failed: {self.describe_error(exc)}"
            ) from None
        finally:
            self.close(conn)


class EmbeddedHTTPTarget(HTTPTarget):
    """The embedded local server: ``work_s`` per request, ``setup_s`` per new connection."""

    def __init__(self, work_s: float, setup_s: float, capacity: int) -> None:
        self.server = EmbeddedHTTPServer(work_s=work_s, setup_s=setup_s, capacity=capacity).start()
        super().__init__(self.server.url, label="http (embedded, 127.0.0.1)")
        self.description = (
            f"GET on a local keep-alive server with {capacity} workers: {work_s * 1000:g} ms "
            f"work per request, {setup_s * 1000:g} ms to set up a connection"
        )

    def cleanup(self) -> None:
        self.server.stop()


def parse_target(text: str, *, sql: str | None = None) -> Target:
    """Build the target named by ``text`` (a database or http(s) URL); CLIError if bad."""
    if "://" not in text:
        raise CLIError(
            f"unsupported target {redact_url(text)!r}: expected a database URL (sqlite:///file.db, "
            "duckdb:///file.duckdb, postgresql://user@host/db, mysql://user@host/db) "
            "or an http(s):// URL"
        )
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return HTTPTarget(text)
    if scheme.split("+", 1)[0] in DB_SCHEMES:
        return DatabaseTarget(text, sql)
    raise CLIError(
        f"unsupported target scheme {scheme!r} in {redact_url(text)!r}: expected sqlite, "
        "duckdb, postgresql, mysql, http or https"
    )


def embedded_targets(work_s: float, setup_s: float, capacity: int = 4) -> list[Target]:
    """The embedded default: a temporary SQLite database and a local HTTP server."""
    targets: list[Target] = [EmbeddedSQLiteTarget()]
    try:
        targets.append(EmbeddedHTTPTarget(work_s, setup_s, capacity))
    except BaseException:
        targets[0].cleanup()
        raise
    return targets
