"""The private servers start, break and come back the way fault tests need."""

from __future__ import annotations

import http.client
import json
import os
import socket

import psycopg
import pytest
import redis

from helpers import FakeClock, wait_for
from servers import PrivatePostgres, PrivateRedis, TcpProxy

pytestmark = pytest.mark.faults


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# ------------------------------------------------------------------ PostgreSQL


def test_postgres_kill_and_restart_on_the_same_port(private_postgres: PrivatePostgres):
    pg = private_postgres
    port, pid = pg.port, pg.pid
    conn = psycopg.connect(pg.dsn, autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        backends = pg.backend_pids()
        assert backends
        pg.kill()
        assert pg.pid is None
        assert not any(os.path.exists(f"/proc/{b}") and _running(b) for b in backends)
        assert port_refuses(port)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()
    pg.start()
    assert pg.port == port and pg.pid not in (None, pid)
    with psycopg.connect(pg.dsn) as again:
        assert again.execute("select 2").fetchone() == (2,)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stop_modes_and_restart(private_postgres: PrivatePostgres, mode: str):
    pg = private_postgres
    pg.stop(mode)  # type: ignore[arg-type]
    assert not pg.running
    assert port_refuses(pg.port)
    pg.restart()
    assert pg.sql("select 40 + 2") == "42"


def test_postgres_settings_and_data_dir_cleanup():
    with PrivatePostgres(settings={"statement_timeout": "1234"}) as pg:
        assert pg.sql("show statement_timeout") == "1234ms"
        root = pg.data_dir.parent
        assert pg.url.endswith(f":{pg.port}/postgres")
    assert not root.exists()
    assert pg.pid is None


def test_postgres_terminate_connections(private_postgres: PrivatePostgres):
    pg = private_postgres
    with psycopg.connect(pg.dsn, autocommit=True) as a, psycopg.connect(pg.dsn) as b:
        assert pg.terminate_connections() == 2
        for conn in (a, b):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")


def test_postgres_through_the_proxy(private_postgres: PrivatePostgres, tcp_proxy):
    pg = private_postgres
    proxy: TcpProxy = tcp_proxy(("127.0.0.1", pg.port))
    with psycopg.connect(pg.dsn_for(port=proxy.port, connect_timeout=5)) as conn:
        assert conn.execute("select 3").fetchone() == (3,)
        proxy.cut_all(reset=True)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 4")


# ------------------------------------------------------------------ Redis


def test_redis_kill_and_restart(private_redis: PrivateRedis):
    rs = private_redis
    client = redis.Redis.from_url(rs.url, socket_timeout=5)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        pid = rs.pid
        rs.kill()
        assert port_refuses(rs.port)
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        rs.start()
        assert rs.pid != pid
        assert client.get("k") is None  # nothing kept on disk
        rs.restart()
        assert client.ping()
    finally:
        client.close()


def test_redis_password():
    with PrivateRedis(password="s3cret") as rs:
        client = redis.Redis.from_url(rs.url)
        try:
            assert client.ping()
        finally:
            client.close()
        with socket.create_connection(("127.0.0.1", rs.port), timeout=5) as bare:
            bare.sendall(b"PING\r\n")
            assert bare.recv(100).startswith(b"-NOAUTH")


# ------------------------------------------------------------------ nginx


def get(conn: http.client.HTTPConnection, path: str, **headers: str) -> tuple[int, bytes, dict]:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read(), dict(resp.getheaders())


def test_nginx_keepalive_reuse_is_visible(private_nginx):
    web = private_nginx
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        first = get(conn, "/conn")[1].split()
        second = get(conn, "/conn")[1].split()
    finally:
        conn.close()
    assert first[0] == second[0]  # same connection serial
    assert (first[1], second[1]) == (b"1", b"2")
    entries = web.access_log(min_entries=3)  # the readiness probe + our two
    ours = [e for e in entries if e.uri == "/conn"]
    assert [e.connection_requests for e in ours] == [1, 2]
    assert ours[0].connection == ours[1].connection


def test_nginx_keepalive_requests_and_reload(private_nginx):
    web = private_nginx
    web.reload(keepalive_requests=2)
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        a = get(conn, "/conn")
        b = get(conn, "/conn")
        assert b[2].get("Connection") == "close"  # nginx closes after keepalive_requests
        c = get(conn, "/conn")  # http.client reconnects
    finally:
        conn.close()
    assert a[1].split()[0] == b[1].split()[0] != c[1].split()[0]


def test_nginx_endpoints(private_nginx):
    web = private_nginx
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        status, body, _ = get(
            conn, "/echo-headers", Authorization="Bearer t", Cookie="a=1", X_Test="x"
        )
        echoed = json.loads(body)
        assert status == 200
        assert echoed["authorization"] == "Bearer t" and echoed["cookie"] == "a=1"
        for size in (0, 1024, 65536):
            status, body, _ = get(conn, f"/bytes/{size}")
            assert status == 200 and len(body) == size
        assert get(conn, "/code/503")[0] == 503
        assert get(conn, "/bytes/7")[0] == 404
        conn.request("POST", "/post", body=b"x" * 5000)
        resp = conn.getresponse()
        assert resp.read() == b"5000\n"
        status, body, headers = get(conn, "/close")
        assert headers.get("Connection") == "close"
        stats = web.status()
        assert stats["active"] >= 1 and stats["accepts"] == stats["handled"] >= 2
    finally:
        conn.close()


def test_nginx_kill_drops_connections_and_restarts(private_nginx):
    web = private_nginx
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        for _ in range(6):
            assert get(conn, "/")[0] == 200
        assert web.status()["requests"] >= 7
        pid = web.pid
        web.kill()
        assert port_refuses(web.port)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            get(conn, "/")
    finally:
        conn.close()
    web.start()
    assert web.pid != pid
    assert web.status()["requests"] < 6  # fresh counters: readiness probes + this one


# ------------------------------------------------------------------ helpers


def test_fake_clock():
    clock = FakeClock(start=5)
    assert clock() == clock.now() == 5
    assert clock.advance(2.5) == 7.5
    clock.sleep(0.5)
    assert clock.monotonic() == 8
    with pytest.raises(ValueError, match="-1"):
        clock.advance(-1)


def test_wait_for_is_bounded():
    assert wait_for(lambda: 3, timeout=0.1) == 3
    with pytest.raises(AssertionError, match="never"):
        wait_for(lambda: False, timeout=0.05, what="never")


def test_missing_binary_skips_with_its_name(monkeypatch):
    import servers

    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers.os.path, "exists", lambda path: False)
    with pytest.raises(pytest.skip.Exception, match="'nginx' is not installed"):
        servers.PrivateNginx()
    with pytest.raises(pytest.skip.Exception, match="'redis-server' is not installed"):
        servers.PrivateRedis()
    assert servers.missing_binary("nginx") == "'nginx' is not installed (not on PATH)"


def test_servers_left_running_are_stopped_at_exit(redis_binary):
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from servers import PrivateRedis\n"
        "rs = PrivateRedis()\n"
        "print(rs.pid, rs.port, flush=True)\n"  # exits without cleanup()
    )
    tests_dir = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script, tests_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pid, port = (int(x) for x in done.stdout.split())
    assert not _running(pid)
    assert port_refuses(port)
