"""Private loopback servers and a TCP fault proxy for poolkit's fault and integration tests.

Everything here talks to 127.0.0.1 only and cleans up after itself:

* :func:`free_port` - a free TCP port on 127.0.0.1.
* :class:`PrivatePostgres` - a throw-away PostgreSQL cluster (initdb once per process into a
  template, copied for each instance) that a test may stop, kill (SIGKILL) and restart on the
  same port.
* :class:`PrivateRedis` - a private ``redis-server`` with nothing kept on disk.
* :class:`PrivateNginx` - a private nginx with keep-alive knobs, a header echo, ``stub_status``
  and fixed-size bodies.
* :class:`TcpProxy` - a loopback TCP fault proxy (stdlib only, one thread) with run-time modes
  ``pass``, ``refuse``, ``reset``, ``freeze``, ``deaf`` and ``latency``.

Example::

    with PrivatePostgres() as pg, TcpProxy(("127.0.0.1", pg.port)) as proxy:
        conn = psycopg.connect(pg.dsn_for(port=proxy.port))
        proxy.set_mode("freeze")      # the established connection goes silent
        ...
        pg.kill()                     # SIGKILL the postmaster
        pg.start()                    # same port, crash recovery, accepts again
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import heapq
import itertools
import os
import pwd
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeVar

__all__ = [
    "EchoServer",
    "PrivateNginx",
    "PrivatePostgres",
    "PrivateRedis",
    "ServerError",
    "TcpProxy",
    "free_port",
    "missing_binary",
]

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A private server failed to start or stop; the message carries the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def missing_binary(*names: str) -> str | None:
    """Return a skip reason naming the first of ``names`` not found on PATH, else None."""
    for name in names:
        if shutil.which(name) is None and not _find_pg_binary(name):
            return f"{name!r} is not installed (not on PATH)"
    return None


def _unavailable(binary: str) -> NoReturn:
    """A server binary is missing: skip the running test (under pytest), else raise."""
    reason = f"{binary!r} is not installed (not on PATH); scripts/test installs what it needs"
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(reason)
    raise ServerError(reason)


def _find_pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    base = Path("/usr/lib/postgresql")
    if name in {"initdb", "postgres", "pg_ctl"} and base.is_dir():
        for version in sorted(base.iterdir(), reverse=True):
            candidate = version / "bin" / name
            if candidate.exists():
                return str(candidate)
    return None


def _deadline(timeout: float) -> Callable[[], float]:
    end = time.monotonic() + timeout

    def remaining() -> float:
        return end - time.monotonic()

    return remaining


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", "replace")


def _children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (read from /proc; empty where /proc is missing)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ... ; comm may hold spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 1 and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rfind(")") + 2 :].split()[0] not in {"Z", "X"}


def _kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> bool:
    remaining = _deadline(timeout)
    while remaining() > 0:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.01)
    return not any(_alive(p) for p in pids)


#: servers not yet cleaned up; stopped at interpreter exit so that a test run that ends
#: without its fixtures' teardown (Ctrl-C, an error in a plain script) leaves no server behind
_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _cleanup_live() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.cleanup()


class _Process:
    """A server process we started: Popen plus stop/kill by PID with bounded waits."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, args: list[str], log: Path, **kwargs: Any) -> None:
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in reap()
        try:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        except BaseException:
            self._log_file.close()
            self._log_file = None
            raise

    def signal(self, sig: int, timeout: float, *, with_children: bool = False) -> None:
        proc = self.proc
        if proc is None:
            return
        children = _children_of(proc.pid) if with_children else []
        if proc.poll() is None:
            _kill_quietly(proc.pid, sig)
        for child in children:
            _kill_quietly(child, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            children = children or _children_of(proc.pid)
            _kill_quietly(proc.pid, signal.SIGKILL)
            for child in children:
                _kill_quietly(child, signal.SIGKILL)
            proc.wait(timeout=10)
        if children and not _wait_gone(children, timeout):
            for child in children:
                _kill_quietly(child, signal.SIGKILL)
            _wait_gone(children, 10)
        self.reap()

    def reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None
        if self.proc is None and self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------------- PostgreSQL

_PG_TEMPLATE_LOCK = threading.Lock()
_PG_TEMPLATE: Path | None = None


def _pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServerError(
            "running as root and there is no 'postgres' system user to run initdb/postgres as"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    uid, gid = ids
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in itertools.chain(dirs, files):
            os.lchown(os.path.join(root, name), uid, gid)


def _as_user(ids: tuple[int, int] | None) -> dict[str, Any]:
    if ids is None:
        return {}
    return {"user": ids[0], "group": ids[1], "extra_groups": [], "umask": 0o077}


def _pg_template() -> Path:
    """initdb once per process into a template data dir; instances copy it."""
    global _PG_TEMPLATE
    with _PG_TEMPLATE_LOCK:
        if _PG_TEMPLATE is not None and (_PG_TEMPLATE / "PG_VERSION").exists():
            return _PG_TEMPLATE
        initdb = _find_pg_binary("initdb")
        if initdb is None:
            _unavailable("initdb")
        ids = _pg_user()
        root = Path(tempfile.mkdtemp(prefix="poolkit-pgtpl-"))
        os.chmod(root, 0o755)
        data = root / "data"
        cmd = [
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--wal-segsize=1",
        ]
        _chown_tree(root, ids)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            cmd, capture_output=True, env=env, cwd=root, timeout=120, check=False, **_as_user(ids)
        )
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            out = (done.stdout + done.stderr).decode("utf-8", "replace")[-2000:]
            raise ServerError(f"initdb failed with exit code {done.returncode}:\n{out}")
        _PG_TEMPLATE = data
        atexit.register(shutil.rmtree, root, True)
        return data


def _pg_probe(host: str, port: int, timeout: float) -> str | None:
    """Send a startup packet; None when the server accepts sessions, else the reason."""
    params = b"user\x00postgres\x00database\x00postgres\x00\x00"
    packet = struct.pack("!ii", 8 + len(params), 196608) + params
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(packet)
            head = s.recv(1)
            if head == b"R":
                with contextlib.suppress(OSError):
                    s.sendall(b"X\x00\x00\x00\x04")
                return None
            if head == b"E":
                rest = s.recv(4096)
                return rest.decode("utf-8", "replace").replace("\x00", " ").strip()
            return f"unexpected reply {head!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


_S = TypeVar("_S", bound="_PrivateServer")


class _PrivateServer:
    """What the private servers share: a process, a scratch directory, clean-up, ``with``."""

    port: int
    _proc: _Process
    _root: Path
    _cleaned: bool

    @property
    def pid(self) -> int | None:
        """PID of the running server (the master process), or None when stopped."""
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc.running

    def kill(self) -> None:
        """SIGKILL the server."""
        raise NotImplementedError

    def _halt(self) -> None:
        """End a server that still runs at clean-up; SIGKILL unless a subclass knows better."""
        self.kill()

    def cleanup(self) -> None:
        """Stop the server if it still runs and delete its directory."""
        if self._cleaned:
            return
        self._cleaned = True
        try:
            if self.running:
                self._halt()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} pid={self.pid}>"


class PrivatePostgres(_PrivateServer):
    """A private PostgreSQL cluster on a free loopback port, for tests that break servers.

    The data dir is a copy of a per-process template (initdb runs once), so an instance starts
    in well under a second. As root the server runs as the ``postgres`` system user. Settings
    favour speed over durability (``fsync=off``).

    Example::

        with PrivatePostgres() as pg:
            conn = psycopg.connect(pg.dsn)
            pg.kill()          # SIGKILL the postmaster and its backends
            pg.start()         # same port, crash recovery, ready again
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        start: bool = True,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._ids = _pg_user()
        self._root = Path(tempfile.mkdtemp(prefix="poolkit-pg-"))
        os.chmod(self._root, 0o755)
        self.data_dir = self._root / "data"
        self.socket_dir = self._root / "sock"
        self.log_path = self._root / "postgres.log"
        self._proc = _Process()
        self._cleaned = False
        _LIVE.add(self)
        try:
            template = _pg_template()
            subprocess.run(["cp", "-a", str(template), str(self.data_dir)], check=True)
            self.socket_dir.mkdir()
            _chown_tree(self._root, self._ids)
            if start:
                self.start()
        except BaseException:
            self.cleanup()
            raise

    # -- addresses
    @property
    def dsn(self) -> str:
        """libpq keyword DSN for the ``postgres`` database as user ``postgres``."""
        return self.dsn_for()

    def dsn_for(self, *, port: int | None = None, dbname: str = "postgres", **extra: Any) -> str:
        """The DSN with another port (say, a :class:`TcpProxy` in front) or extra keywords."""
        parts = {
            "host": self.host,
            "port": port if port is not None else self.port,
            "user": "postgres",
            "dbname": dbname,
        }
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def backend_pids(self) -> list[int]:
        """PIDs of the postmaster's children (backends and auxiliary processes)."""
        pid = self.pid
        return _children_of(pid) if pid is not None else []

    # -- lifecycle
    def start(self) -> None:
        """Start the postmaster on ``self.port`` and wait until it accepts sessions."""
        if self._cleaned:
            raise ServerError("this PrivatePostgres was cleaned up; make a new one")
        if self.running:
            return
        binary = _find_pg_binary("postgres")
        if binary is None:
            _unavailable("postgres")
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "60",
            "max_wal_senders": "0",
            "wal_level": "minimal",
            "jit": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "autovacuum": "off",
        }
        settings.update(self.settings)
        args = [binary, "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self._proc.spawn(args, self.log_path, cwd=self._root, **_as_user(self._ids))
        remaining = _deadline(self.start_timeout)
        reason: str | None = "not probed"
        while remaining() > 0:
            if not self.running:
                self._proc.reap()
                raise ServerError(
                    f"postgres on port {self.port} exited during start-up:\n{_tail(self.log_path)}"
                )
            reason = _pg_probe(self.host, self.port, timeout=max(0.1, min(2.0, remaining())))
            if reason is None:
                return
            time.sleep(0.02)
        self.stop("immediate")
        raise ServerError(
            f"postgres on port {self.port} did not accept sessions within "
            f"{self.start_timeout} s (last: {reason}):\n{_tail(self.log_path)}"
        )

    def stop(
        self, mode: Literal["smart", "fast", "immediate"] = "fast", timeout: float = 30
    ) -> None:
        """Shut down like ``pg_ctl stop -m MODE`` (SIGTERM / SIGINT / SIGQUIT) and wait."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}.get(
            mode
        )
        if sig is None:
            raise ValueError(f"mode ({mode!r}) must be 'smart', 'fast' or 'immediate'")
        self._proc.signal(sig, timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster, then its backends (a crash: clients see a dead socket)."""
        self._proc.signal(signal.SIGKILL, 10, with_children=True)

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop (if running) and start again on the same port."""
        self.stop(mode)
        self.start()

    def sql(self, query: str, dbname: str = "postgres") -> str:
        """Run one statement with ``psql`` over the Unix socket; returns unaligned output."""
        psql = _find_pg_binary("psql") or "psql"
        done = subprocess.run(
            [
                psql,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-c",
                query,
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ServerError(f"psql failed on {query!r}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def terminate_connections(self) -> int:
        """``pg_terminate_backend`` every client session (an admin kill); returns the count."""
        return int(
            self.sql(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where backend_type = 'client backend' and pid <> pg_backend_pid()"
            )
        )

    def _halt(self) -> None:
        self.stop("immediate", timeout=10)


# --------------------------------------------------------------------------- Redis


def _redis_ping(host: str, port: int, password: str | None, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if password:
                s.sendall(f"AUTH {password}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return "AUTH refused"
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            return None if reply.startswith(b"+PONG") else reply.decode(errors="replace")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


class PrivateRedis(_PrivateServer):
    """A private ``redis-server`` on a free loopback port that keeps nothing on disk.

    Example::

        with PrivateRedis() as rs:
            client = redis.Redis.from_url(rs.url)
            rs.kill()      # SIGKILL
            rs.start()     # same port, empty data set
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        args: list[str] | None = None,
        start_timeout: float = 15.0,
        start: bool = True,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.password = password
        self.extra_args = list(args or [])
        self.start_timeout = start_timeout
        self._root = Path(tempfile.mkdtemp(prefix="poolkit-redis-"))
        self.log_path = self._root / "redis.log"
        self._proc = _Process()
        self._cleaned = False
        _LIVE.add(self)
        if start:
            try:
                self.start()
            except BaseException:
                self.cleanup()
                raise

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{urllib.parse.quote(self.password)}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> None:
        """Start redis-server on ``self.port`` and wait until it answers PING."""
        if self._cleaned:
            raise ServerError("this PrivateRedis was cleaned up; make a new one")
        if self.running:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server")
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._root),
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self._proc.spawn(args, self.log_path, cwd=self._root)
        remaining = _deadline(self.start_timeout)
        reason: str | None = "not probed"
        while remaining() > 0:
            if not self.running:
                self._proc.reap()
                raise ServerError(
                    f"redis-server on port {self.port} exited during start-up:\n"
                    f"{_tail(self.log_path)}"
                )
            reason = _redis_ping(self.host, self.port, self.password, timeout=1.0)
            if reason is None:
                return
            time.sleep(0.01)
        self.kill()
        raise ServerError(
            f"redis-server on port {self.port} did not answer PING within {self.start_timeout} s "
            f"(last: {reason}):\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM and wait (redis shuts down cleanly)."""
        self._proc.signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the server."""
        self._proc.signal(signal.SIGKILL, 10)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port (the data set is lost)."""
        self.stop()
        self.start()


# --------------------------------------------------------------------------- nginx

#: sizes of the static bodies served at ``/bytes/N``
NGINX_BODY_SIZES = (0, 1, 100, 1024, 16384, 65536, 1048576)


def _nginx_user() -> str:
    if os.geteuid() != 0:
        return ""
    for name, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return f"user {name} {group};"
    return ""


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """A tiny HTTP/1.0 GET (one connection, closed after) for readiness and status checks."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers, body


@dataclass(frozen=True)
class NginxLogEntry:
    """One access-log line: the connection serial number and its request count prove reuse."""

    connection: int
    connection_requests: int
    method: str
    uri: str
    status: int
    body_bytes: int
    user_agent: str


class PrivateNginx(_PrivateServer):
    """A private nginx on a free loopback port with keep-alive knobs and test endpoints.

    Endpoints:

    * ``/`` - ``ok`` (text/plain); response header ``X-Generation`` counts reloads.
    * ``/echo-headers`` - JSON with the request's ``authorization``, ``cookie``, ``host``,
      ``user_agent``, ``x_test`` headers and nginx's ``connection`` serial and
      ``connection_requests`` (values are inserted raw: avoid ``"`` in them).
    * ``/conn`` - ``CONNECTION REQUESTS`` as text: one request proves keep-alive reuse.
    * ``/status`` - ``stub_status`` (see :meth:`status`).
    * ``/bytes/N`` - a static body of N bytes, N in :data:`NGINX_BODY_SIZES`; ``/slow/N`` the
      same sent at ``slow_rate`` bytes/s.
    * ``/close`` - responds and closes the connection (``keepalive_timeout 0``).
    * ``/post`` - accepts a body up to 10 MB and returns its Content-Length.
    * ``/code/500``, ``/code/503`` - those statuses.

    Example::

        with PrivateNginx(keepalive_requests=3) as web:
            r = httpx.get(web.url("/echo-headers"), headers={"Authorization": "x"})
            web.access_log()   # [NginxLogEntry(connection=1, connection_requests=1, ...)]
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        keepalive_timeout: float = 75.0,
        keepalive_requests: int = 1000,
        slow_rate: int = 16384,
        start_timeout: float = 15.0,
        start: bool = True,
    ) -> None:
        self.binary = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if self.binary is None:
            _unavailable("nginx")
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.keepalive_timeout = keepalive_timeout
        self.keepalive_requests = keepalive_requests
        self.slow_rate = slow_rate
        self.start_timeout = start_timeout
        self.generation = 0
        self._root = Path(tempfile.mkdtemp(prefix="poolkit-nginx-"))
        os.chmod(self._root, 0o755)
        self.conf_path = self._root / "nginx.conf"
        self.access_log_path = self._root / "access.log"
        self.error_log_path = self._root / "error.log"
        self.pid_path = self._root / "nginx.pid"
        self._proc = _Process()
        self._cleaned = False
        _LIVE.add(self)
        try:
            www = self._root / "www" / "bytes"
            www.mkdir(parents=True)
            for size in NGINX_BODY_SIZES:
                (www / str(size)).write_bytes(bytes(i % 251 for i in range(size)))
            for p in (self._root / "www", www):
                os.chmod(p, 0o755)
            for size in NGINX_BODY_SIZES:
                os.chmod(www / str(size), 0o644)
            (self._root / "tmp").mkdir()
            self._write_config()
            if start:
                self.start()
        except BaseException:
            self.cleanup()
            raise

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT`` + path."""
        return f"http://{self.host}:{self.port}{path}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _write_config(self) -> None:
        r = self._root
        ka = f"{self.keepalive_timeout:g}s" if self.keepalive_timeout > 0 else "0"
        echo = (
            '{"authorization":"$http_authorization","cookie":"$http_cookie","host":"$http_host",'
            '"user_agent":"$http_user_agent","x_test":"$http_x_test",'
            '"connection":"$connection","connection_requests":"$connection_requests"}'
        )
        temp = "\n".join(
            f"    {name}_temp_path {r}/tmp/{name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""
{_nginx_user()}
daemon off;
master_process on;
worker_processes 1;
pid {self.pid_path};
error_log {self.error_log_path} warn;
events {{ worker_connections 512; }}
http {{
    log_format poolkit '$connection $connection_requests $request_method $uri $status '
                       '$body_bytes_sent "$http_user_agent"';
    access_log {self.access_log_path} poolkit;
{temp}
    keepalive_timeout {ka};
    keepalive_requests {self.keepalive_requests};
    default_type text/plain;
    server {{
        listen {self.host}:{self.port};
        server_name localhost;
        location = / {{ add_header X-Generation {self.generation}; return 200 "ok\\n"; }}
        location = /echo-headers {{
            default_type application/json;
            return 200 '{echo}';
        }}
        location = /conn {{ return 200 "$connection $connection_requests\\n"; }}
        location = /status {{ stub_status; }}
        location /bytes/ {{ root {r}/www; default_type application/octet-stream; }}
        location /slow/ {{
            alias {r}/www/bytes/;
            default_type application/octet-stream;
            limit_rate {self.slow_rate};
        }}
        location = /close {{ keepalive_timeout 0; return 200 "closing\\n"; }}
        location = /post {{ client_max_body_size 10m; return 200 "$content_length\\n"; }}
        location = /code/500 {{ return 500 "error\\n"; }}
        location = /code/503 {{ return 503 "unavailable\\n"; }}
    }}
}}
"""
        self.conf_path.write_text(conf)

    def _probe(self, timeout: float) -> str | None:
        try:
            status, headers, _ = _http_get(self.host, self.port, "/", timeout)
        except (OSError, ValueError, IndexError) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status != 200:
            return f"status {status}"
        if headers.get("x-generation") != str(self.generation):
            return f"generation {headers.get('x-generation')} != {self.generation}"
        return None

    def _wait_ready(self, what: str) -> None:
        remaining = _deadline(self.start_timeout)
        reason: str | None = "not probed"
        while remaining() > 0:
            if not self.running:
                self._proc.reap()
                raise ServerError(
                    f"nginx on port {self.port} exited during {what}:\n{_tail(self.error_log_path)}"
                )
            reason = self._probe(timeout=1.0)
            if reason is None:
                return
            time.sleep(0.01)
        raise ServerError(
            f"nginx on port {self.port} not ready after {what} within {self.start_timeout} s "
            f"(last: {reason}):\n{_tail(self.error_log_path)}"
        )

    def start(self) -> None:
        """Start nginx (master + one worker) and wait until ``/`` answers."""
        if self._cleaned:
            raise ServerError("this PrivateNginx was cleaned up; make a new one")
        if self.running:
            return
        assert self.binary is not None
        args = [
            self.binary,
            "-p",
            str(self._root),
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log_path),
        ]
        self._proc.spawn(args, self._root / "stdout.log", cwd=self._root)
        try:
            self._wait_ready("start-up")
        except ServerError:
            self.kill()
            raise

    def reload(
        self, *, keepalive_timeout: float | None = None, keepalive_requests: int | None = None
    ) -> None:
        """Rewrite the config (optionally with new keep-alive knobs), SIGHUP, wait for it."""
        if keepalive_timeout is not None:
            self.keepalive_timeout = keepalive_timeout
        if keepalive_requests is not None:
            self.keepalive_requests = keepalive_requests
        self.generation += 1
        self._write_config()
        pid = self.pid
        if pid is None:
            raise ServerError("nginx is not running")
        old_workers = _children_of(pid)
        os.kill(pid, signal.SIGHUP)
        self._wait_ready("reload")
        # old workers keep accepting until they act on the master's QUIT: wait them out
        # (bounded; one still finishing a slow response is left to finish on its own)
        _wait_gone(old_workers, self.start_timeout)

    def stop(self, graceful: bool = True, timeout: float = 15) -> None:
        """SIGQUIT (graceful: finish in-flight requests) or SIGTERM (fast), and wait."""
        self._proc.signal(signal.SIGQUIT if graceful else signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the master and its workers: every connection drops at once."""
        self._proc.signal(signal.SIGKILL, 10, with_children=True)

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop(graceful=False)
        self.start()

    def status(self) -> dict[str, int]:
        """Parse ``/status`` (stub_status); this request itself counts as one connection.

        Keys: active, accepts, handled, requests, reading, writing, waiting.
        """
        code, _, body = _http_get(self.host, self.port, "/status", timeout=5)
        if code != 200:
            raise ServerError(f"/status answered {code}")
        lines = body.decode().split("\n")
        active = int(lines[0].split(":")[1])
        accepts, handled, requests = (int(x) for x in lines[2].split())
        rw = lines[3].split()
        return {
            "active": active,
            "accepts": accepts,
            "handled": handled,
            "requests": requests,
            "reading": int(rw[1]),
            "writing": int(rw[3]),
            "waiting": int(rw[5]),
        }

    def access_log(self, min_entries: int = 0, timeout: float = 5.0) -> list[NginxLogEntry]:
        """Parsed access-log entries; waits (bounded) until at least ``min_entries`` exist.

        nginx writes a line after the response is sent, so a client can see the response
        before its line lands: pass ``min_entries`` to wait for it.
        """
        remaining = _deadline(timeout)
        while True:
            entries = self._read_log()
            if len(entries) >= min_entries or remaining() <= 0:
                return entries
            time.sleep(0.01)

    def _read_log(self) -> list[NginxLogEntry]:
        try:
            text = self.access_log_path.read_text()
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            head, _, agent = line.partition(' "')
            parts = head.split()
            if len(parts) != 6:
                continue
            entries.append(
                NginxLogEntry(
                    connection=int(parts[0]),
                    connection_requests=int(parts[1]),
                    method=parts[2],
                    uri=parts[3],
                    status=int(parts[4]),
                    body_bytes=int(parts[5]),
                    user_agent=agent.rstrip('"'),
                )
            )
        return entries


# --------------------------------------------------------------------------- TCP fault proxy

ProxyMode = Literal["pass", "refuse", "reset", "freeze", "deaf", "latency"]
PROXY_MODES: tuple[str, ...] = ("pass", "refuse", "reset", "freeze", "deaf", "latency")
_BUFFER_LIMIT = 1 << 20  # stop reading a side while this much is queued for the other


def _queued(out: bytearray, pending: deque[tuple[float, bytes]]) -> int:
    """Bytes waiting to go one way: in the output buffer plus those held back by latency."""
    return len(out) + sum(len(data) for _, data in pending) if pending else len(out)


def _rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets a RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Flow:
    client: socket.socket
    upstream: socket.socket | None = None
    connecting: bool = False
    # per direction: pending chunks (due, data; b"" = EOF), output buffer, EOF flags
    pending_up: deque[tuple[float, bytes]] = field(default_factory=deque)
    pending_down: deque[tuple[float, bytes]] = field(default_factory=deque)
    out_up: bytearray = field(default_factory=bytearray)
    out_down: bytearray = field(default_factory=bytearray)
    eof_client: bool = False  # client sent FIN (we read EOF)
    eof_upstream: bool = False
    shut_up: bool = False  # we sent FIN to upstream
    shut_down: bool = False  # we sent FIN to client
    closed: bool = False


class TcpProxy:
    """A loopback TCP fault proxy in front of ``target``; switch its mode at run time.

    One background thread runs a selector loop over every flow (stdlib only). Modes:

    * ``pass`` - forward bytes both ways (half-close and resets are propagated).
    * ``refuse`` - the listening socket is closed: new connects get ECONNREFUSED; established
      flows carry on.
    * ``reset`` - every established flow is reset (RST to both sides) and new connections are
      accepted and reset at once.
    * ``freeze`` - a network partition: established flows stop forwarding in both directions
      without closing (no FIN, no RST: a blackhole) and new connects hang (no SYN-ACK).
      Leaving ``freeze`` delivers what was held back.
    * ``deaf`` - stop accepting: new connects hang (the accept queue is kept full, so the
      kernel drops SYNs); established flows carry on.
    * ``latency`` - forward with ``latency_s`` added to every chunk, each direction.

    :meth:`set_mode` returns once the mode is in force. :meth:`cut_all` closes every
    established flow (FIN, or RST with ``reset=True``).

    Example::

        with TcpProxy(("127.0.0.1", pg.port)) as proxy:
            conn = psycopg.connect(pg.dsn_for(port=proxy.port))
            proxy.set_mode("freeze")
            ...
            proxy.set_mode("pass")
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = LOOPBACK,
        port: int = 0,
        mode: ProxyMode = "pass",
        latency_s: float = 0.05,
        connect_timeout: float = 5.0,
    ) -> None:
        if mode not in PROXY_MODES:
            raise ValueError(f"mode ({mode!r}) must be one of {PROXY_MODES}")
        if latency_s < 0:
            raise ValueError(f"latency_s ({latency_s}) must be >= 0")
        self.target = target
        self.host = host
        self.latency_s = latency_s
        self.connect_timeout = connect_timeout
        self._mode: str = "pass"
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []
        self._filler_addrs: set[tuple[str, int]] = set()
        self._flows: set[_Flow] = set()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._commands: deque[tuple[Callable[[], Any], threading.Event, list[Any]]] = deque()
        self._cmd_lock = threading.Lock()
        self._stopping = False
        self._closed = False
        self._timers: list[tuple[float, int, _Flow]] = []
        self._timer_seq = itertools.count()
        self._connect_deadlines: dict[_Flow, float] = {}
        self.accepted_total = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.error: BaseException | None = None
        try:
            self._listener = self._listen(port)
            self.port: int = self._listener.getsockname()[1]
            self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy-{self.port}->{target[1]}", daemon=True
        )
        self._thread.start()
        if mode != "pass":
            self.set_mode(mode)

    # -- public API
    @property
    def address(self) -> tuple[str, int]:
        """(host, port) clients should connect to."""
        return (self.host, self.port)

    @property
    def mode(self) -> str:
        """The mode in force."""
        return self._mode

    @property
    def connections(self) -> int:
        """Established flows (client accepted, not yet closed)."""
        return int(self._call(lambda: sum(1 for f in self._flows if not f.closed)))

    def set_mode(self, mode: ProxyMode, *, latency_s: float | None = None) -> None:
        """Switch mode; returns when it is in force (``latency_s`` also sets the delay)."""
        if mode not in PROXY_MODES:
            raise ValueError(f"mode ({mode!r}) must be one of {PROXY_MODES}")
        if latency_s is not None:
            if latency_s < 0:
                raise ValueError(f"latency_s ({latency_s}) must be >= 0")
            self.latency_s = latency_s
        self._call(lambda: self._apply_mode(mode))

    def cut_all(self, *, reset: bool = False) -> int:
        """Close every established flow (FIN both sides, or RST with ``reset=True``)."""

        def cut() -> int:
            flows = [f for f in self._flows if not f.closed]
            for flow in flows:
                self._close_flow(flow, reset=reset)
            return len(flows)

        return int(self._call(cut))

    def close(self) -> None:
        """Close every flow and the listener, and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake()
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # pragma: no cover - would be a bug in the loop
            raise RuntimeError("TcpProxy thread did not stop within 10 s")
        self._close_sockets()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TcpProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} {self._mode}>"
        )

    # -- plumbing between caller threads and the loop
    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        if self._closed:
            raise RuntimeError("TcpProxy is closed")
        if threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        box: list[Any] = []
        with self._cmd_lock:
            self._commands.append((fn, done, box))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError(f"TcpProxy loop did not answer within {timeout} s")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, port))
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    # -- mode changes (run in the loop thread)
    def _apply_mode(self, mode: str) -> None:
        old = self._mode
        if old == mode:
            return
        # leave the old mode's listener state
        if old == "refuse":
            self._listener = self._listen(self.port)
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        elif old in ("deaf", "freeze") and mode not in ("deaf", "freeze"):
            self._end_deaf()
        # enter the new one
        self._mode = mode
        if mode == "refuse":
            assert self._listener is not None
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        elif mode in ("deaf", "freeze") and old not in ("deaf", "freeze"):
            self._begin_deaf()
        if mode == "reset":
            for flow in list(self._flows):
                self._close_flow(flow, reset=True)
        for flow in list(self._flows):
            self._flush(flow)

    def _begin_deaf(self) -> None:
        listener = self._listener
        assert listener is not None
        self._sel.unregister(listener)
        listener.listen(0)  # accept queue of one: full after one pending connection
        for _ in range(2):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            err = filler.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                filler.close()
                continue
            with contextlib.suppress(OSError):
                self._filler_addrs.add(filler.getsockname())
            self._fillers.append(filler)
            time.sleep(0.005)  # let the loopback handshake land in the queue

    def _end_deaf(self) -> None:
        listener = self._listener
        assert listener is not None
        listener.listen(128)
        self._sel.register(listener, selectors.EVENT_READ, "accept")
        # drain the fillers from the accept queue, then close our ends
        for _ in range(len(self._fillers) + 1):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            if addr in self._filler_addrs:
                sock.close()
            else:
                self._new_client(sock)
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        self._filler_addrs.clear()

    # -- the loop
    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = self._next_timeout()
                for key, events in self._sel.select(timeout):
                    if self._stopping:
                        break
                    self._dispatch(key, events)
                self._run_commands()
                self._fire_timers()
        except BaseException as exc:  # pragma: no cover - surfaces in tests via .error
            self.error = exc
            raise
        finally:
            self._run_commands(failing=True)
            for flow in list(self._flows):
                self._close_flow(flow, reset=False)

    def _run_commands(self, failing: bool = False) -> None:
        while True:
            with self._cmd_lock:
                if not self._commands:
                    return
                fn, done, box = self._commands.popleft()
            if failing:
                box.append(RuntimeError("TcpProxy is closing"))
            else:
                try:
                    box.append(fn())
                except Exception as exc:
                    box.append(exc)
            done.set()

    def _next_timeout(self) -> float | None:
        now = time.monotonic()
        due: list[float] = []
        if self._timers:
            due.append(self._timers[0][0])
        if self._connect_deadlines:
            due.append(min(self._connect_deadlines.values()))
        if not due:
            return None
        return max(0.0, min(due) - now)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for flow, deadline in list(self._connect_deadlines.items()):
            if deadline <= now:
                self._close_flow(flow, reset=True)
        while self._timers and self._timers[0][0] <= now:
            _, _, flow = heapq.heappop(self._timers)
            if not flow.closed:
                self._move_due(flow, now)
                self._flush(flow)

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        data = key.data
        if data == "wake":
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
            return
        if data == "accept":
            self._accept()
            return
        flow, side = data
        if flow.closed:
            return
        if side == "upstream" and flow.connecting:
            self._finish_connect(flow)
            return
        if events & selectors.EVENT_READ:
            self._read(flow, side)
        if not flow.closed and events & selectors.EVENT_WRITE:
            self._flush(flow)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr in self._filler_addrs:
                sock.close()
                continue
            self._new_client(sock)

    def _new_client(self, sock: socket.socket) -> None:
        self.accepted_total += 1
        if self._mode == "reset":
            _rst_close(sock)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flow = _Flow(client=sock)
        self._flows.add(flow)
        self._sel.register(sock, selectors.EVENT_READ, (flow, "client"))
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flow.upstream = up
        flow.connecting = True
        err = up.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._close_flow(flow, reset=True)
            return
        self._connect_deadlines[flow] = time.monotonic() + self.connect_timeout
        self._sel.register(up, selectors.EVENT_WRITE, (flow, "upstream"))
        self._update_interest(flow)

    def _finish_connect(self, flow: _Flow) -> None:
        assert flow.upstream is not None
        err = flow.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._connect_deadlines.pop(flow, None)
        if err != 0:
            self._close_flow(flow, reset=True)  # upstream refused: reset the client
            return
        flow.connecting = False
        self._update_interest(flow)
        self._flush(flow)

    def _read(self, flow: _Flow, side: str) -> None:
        sock = flow.client if side == "client" else flow.upstream
        assert sock is not None
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # the peer reset: pass the reset on
            self._close_flow(flow, reset=True)
            return
        now = time.monotonic()
        delay = self.latency_s if self._mode == "latency" else 0.0
        pending = flow.pending_up if side == "client" else flow.pending_down
        due = now + delay
        if pending and pending[-1][0] > due:
            due = pending[-1][0]  # keep order when the latency shrinks
        pending.append((due, data))
        if not data:
            if side == "client":
                flow.eof_client = True
            else:
                flow.eof_upstream = True
        if delay > 0:
            heapq.heappush(self._timers, (due, next(self._timer_seq), flow))
        self._move_due(flow, now)
        self._flush(flow)

    def _move_due(self, flow: _Flow, now: float) -> None:
        if self._mode == "freeze":
            return
        for pending, out in ((flow.pending_up, flow.out_up), (flow.pending_down, flow.out_down)):
            while pending and pending[0][0] <= now:
                _, data = pending.popleft()
                if data:
                    out.extend(data)
                else:
                    pending.appendleft((0.0, b""))  # EOF marker: stays until out drains
                    break

    def _flush(self, flow: _Flow) -> None:
        if flow.closed:
            return
        if self._mode == "freeze" or flow.connecting:
            self._update_interest(flow)
            return
        self._move_due(flow, time.monotonic())
        for dest, out, pending, is_up in (
            (flow.upstream, flow.out_up, flow.pending_up, True),
            (flow.client, flow.out_down, flow.pending_down, False),
        ):
            assert dest is not None
            if out:
                try:
                    sent = dest.send(out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close_flow(flow, reset=True)
                    return
                del out[:sent]
                if is_up:
                    self.bytes_up += sent
                else:
                    self.bytes_down += sent
            if not out and pending and pending[0] == (0.0, b""):
                pending.popleft()
                with contextlib.suppress(OSError):
                    dest.shutdown(socket.SHUT_WR)
                if is_up:
                    flow.shut_up = True
                else:
                    flow.shut_down = True
        if flow.shut_up and flow.shut_down:
            self._close_flow(flow, reset=False)
            return
        self._update_interest(flow)

    def _update_interest(self, flow: _Flow) -> None:
        if flow.closed:
            return
        frozen = self._mode == "freeze"
        room_up = _queued(flow.out_up, flow.pending_up) < _BUFFER_LIMIT
        room_down = _queued(flow.out_down, flow.pending_down) < _BUFFER_LIMIT
        c_ev = 0
        u_ev = 0
        if flow.connecting:
            u_ev = selectors.EVENT_WRITE
            if not frozen and not flow.eof_client and room_up:
                c_ev |= selectors.EVENT_READ
        elif not frozen:
            if not flow.eof_client and room_up:
                c_ev |= selectors.EVENT_READ
            if not flow.eof_upstream and room_down:
                u_ev |= selectors.EVENT_READ
            if flow.out_up:
                u_ev |= selectors.EVENT_WRITE
            if flow.out_down:
                c_ev |= selectors.EVENT_WRITE
        self._set_events(flow.client, c_ev, (flow, "client"))
        if flow.upstream is not None:
            self._set_events(flow.upstream, u_ev, (flow, "upstream"))

    def _set_events(self, sock: socket.socket, events: int, data: Any) -> None:
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if events:
                self._sel.register(sock, events, data)
            return
        if events == 0:
            self._sel.unregister(sock)
        elif key.events != events:
            self._sel.modify(sock, events, data)

    def _close_flow(self, flow: _Flow, *, reset: bool) -> None:
        if flow.closed:
            return
        flow.closed = True
        self._flows.discard(flow)
        self._connect_deadlines.pop(flow, None)
        for sock in (flow.client, flow.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if reset:
                _rst_close(sock)
            else:
                sock.close()

    def _close_sockets(self) -> None:
        for sock in (self._listener, *self._fillers):
            if sock is not None:
                sock.close()
        self._listener = None
        self._fillers.clear()
        for flow in list(self._flows):
            for sock in (flow.client, flow.upstream):
                if sock is not None:
                    sock.close()
        self._flows.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()


class EchoServer:
    """A threaded loopback TCP echo server (a plain target for proxy tests).

    Example::

        with EchoServer() as echo, TcpProxy(echo.address) as proxy:
            with socket.create_connection(proxy.address) as s:
                s.sendall(b"hi"); assert s.recv(2) == b"hi"
    """

    def __init__(self, host: str = LOOPBACK) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self.address: tuple[str, int] = self._listener.getsockname()
        self.port = self.address[1]
        self.accepted = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="EchoServer", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self.accepted += 1
                self._socks.add(sock)
                t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def close(self) -> None:
        """Stop accepting, close every connection and join the threads."""
        with self._lock:
            self._closed = True
            socks = list(self._socks)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def proxied(target: tuple[str, int], **kwargs: Any) -> Iterator[TcpProxy]:
    """``with proxied(addr) as proxy:`` - a :class:`TcpProxy` closed on exit."""
    proxy = TcpProxy(target, **kwargs)
    try:
        yield proxy
    finally:
        proxy.close()
