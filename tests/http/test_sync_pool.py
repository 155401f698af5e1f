"""HTTPPool against a private nginx: keep-alive reuse, staleness, retries, isolation, limits."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from poolkit.http import HTTPPool, TLSConfig
from poolkit.http import _sync as sync_mod

from helpers import wait_for
from servers import PrivateNginx

pytestmark = pytest.mark.usefixtures("nginx_binary")


@pytest.fixture(autouse=True, params=["httptools", "http.client"])
def sync_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both protocol backends (``parser="auto"`` picks the first)."""
    if request.param == "http.client":
        monkeypatch.setattr(sync_mod, "httptools", None)
    elif sync_mod.httptools is None:
        pytest.skip("httptools is not installed (pip install 'poolkit[http]')")
    return str(request.param)


UA = {"User-Agent": "poolkit-test"}


def ours(web: PrivateNginx, at_least: int = 0) -> list:  # type: ignore[type-arg]
    """Access-log entries of requests sent by the pools under test (not nginx probes)."""
    wait_for(
        lambda: len([e for e in web.access_log() if e.user_agent == "poolkit-test"]) >= at_least,
        timeout=10,
        what=f"{at_least} access-log lines",
    )
    return [e for e in web.access_log() if e.user_agent == "poolkit-test"]


def conn_of(pool: HTTPPool, url: str) -> tuple[int, int]:
    """nginx's (connection serial, requests on it) for one request to ``/conn``."""
    resp = pool.request("GET", url)
    assert resp.status == 200
    serial, count = resp.body.split()
    return int(serial), int(count)


def test_keepalive_reuse_visible_in_nginx(private_nginx: PrivateNginx) -> None:
    before = private_nginx.status()["accepts"]
    with HTTPPool(headers=UA) as pool:
        for _ in range(20):
            assert pool.request("GET", private_nginx.url("/")).body == b"ok\n"
        entries = ours(private_nginx, 20)
        assert len({e.connection for e in entries}) == 1
        assert [e.connection_requests for e in entries] == list(range(1, 21))
        stats = pool.stats()
        assert stats.created_total == 1
    # our 20 requests opened one connection; the two /status probes opened one each
    assert private_nginx.status()["accepts"] - before == 2


def test_concurrent_callers_share_at_most_max_per_host(private_nginx: PrivateNginx) -> None:
    errors: list[BaseException] = []

    def worker(pool: HTTPPool) -> None:
        try:
            for _ in range(25):
                assert pool.request("GET", private_nginx.url("/")).status == 200
        except BaseException as exc:
            errors.append(exc)

    with HTTPPool(max_per_host=3, headers=UA) as pool:
        threads = [threading.Thread(target=worker, args=(pool,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        entries = ours(private_nginx, 200)
        assert len(entries) == 200
        assert len({e.connection for e in entries}) <= 3


def test_idle_connection_closed_by_server_is_detected(
    short_keepalive_nginx: PrivateNginx,
) -> None:
    web = short_keepalive_nginx
    with HTTPPool() as pool:
        first, _ = conn_of(pool, web.url("/conn"))
        # nginx closes the idle connection after 1 s; wait until only the probe is active
        wait_for(lambda: web.status()["active"] == 1, timeout=10, what="nginx idle close")
        second, count = conn_of(pool, web.url("/conn"))
        assert second != first and count == 1
        stats = pool.stats()
        assert stats.created_total == 2
        assert stats.destroyed_total == 1


def _pretend_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduce the race where the server's FIN lands just after the readability check."""
    monkeypatch.setattr(sync_mod._Conn, "is_fresh", lambda self: True)


def test_idempotent_request_on_closed_connection_is_retried_once(
    short_keepalive_nginx: PrivateNginx, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = short_keepalive_nginx
    _pretend_fresh(monkeypatch)
    with HTTPPool() as pool:
        first, _ = conn_of(pool, web.url("/conn"))
        wait_for(lambda: web.status()["active"] == 1, timeout=10, what="nginx idle close")
        second, count = conn_of(pool, web.url("/conn"))  # GET: retried on a new connection
        assert second != first and count == 1


def test_post_on_closed_connection_is_not_retried(
    short_keepalive_nginx: PrivateNginx, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = short_keepalive_nginx
    _pretend_fresh(monkeypatch)
    with HTTPPool() as pool:
        conn_of(pool, web.url("/conn"))
        wait_for(lambda: web.status()["active"] == 1, timeout=10, what="nginx idle close")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            pool.request("POST", web.url("/post"), body=b"not twice")
        posts = [e for e in web.access_log() if e.method == "POST"]
        assert posts == []
        # the broken connection was dropped, the next POST gets a fresh one
        assert pool.request("POST", web.url("/post"), body=b"12345").body == b"5\n"


def test_no_failures_when_server_closes_idle_connections_every_second(
    short_keepalive_nginx: PrivateNginx,
) -> None:
    web = short_keepalive_nginx
    errors: list[BaseException] = []
    pauses = (0.97, 1.0, 1.03)

    def worker(pool: HTTPPool, pause: float) -> None:
        try:
            for _ in range(2):
                for _ in range(5):
                    assert pool.request("GET", web.url("/")).status == 200
                time.sleep(pause)  # workload shape: idle right around keepalive_timeout
            assert pool.request("GET", web.url("/")).status == 200
        except BaseException as exc:
            errors.append(exc)

    with HTTPPool(max_per_host=4) as pool:
        threads = [threading.Thread(target=worker, args=(pool, p)) for p in pauses]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []


def test_restart_under_load_fails_only_in_flight_requests(private_nginx: PrivateNginx) -> None:
    """nginx stops and starts while 4 threads send requests.

    A request started before the stop may fail (it was in flight), one started while
    nginx is down gets ``ConnectionRefusedError`` (nothing listens), and none started
    after the restart may fail: the pooled connections to the old nginx are all dead,
    and the pool must notice that instead of handing them out.
    """
    web = private_nginx
    phase = ["before"]  # before -> down -> after
    restarted = threading.Event()
    failures: list[tuple[str, BaseException]] = []
    after: list[int] = []
    lock = threading.Lock()

    def worker(pool: HTTPPool) -> None:
        ok_after = 0
        for _ in range(5000):
            started_in = phase[0]
            try:
                assert pool.request("GET", web.url("/")).status == 200
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append((started_in, exc))
                if isinstance(exc, ConnectionRefusedError):
                    restarted.wait(10)
                continue
            if started_in == "after":
                ok_after += 1
                if ok_after >= 20:
                    break
        with lock:
            after.append(ok_after)

    threads_n = 4
    with HTTPPool(max_per_host=threads_n) as pool:
        threads = [threading.Thread(target=worker, args=(pool,)) for _ in range(threads_n)]
        for t in threads:
            t.start()
        wait_for(lambda: len(web.access_log()) >= 200, timeout=20, what="load")
        phase[0] = "down"
        web.restart()
        phase[0] = "after"
        restarted.set()
        for t in threads:
            t.join(60)
    assert after == [20] * threads_n, failures
    assert [e for p, e in failures if p == "after"] == []
    assert len([e for p, e in failures if p == "before"]) <= threads_n, failures
    down = [e for p, e in failures if p == "down"]
    assert all(isinstance(e, (ConnectionRefusedError, ConnectionResetError)) for e in down), down


def test_headers_do_not_leak_between_requests(private_nginx: PrivateNginx) -> None:
    url = private_nginx.url("/echo-headers")
    with HTTPPool(headers={"X-Test": "pool-default"}) as pool:
        secret = pool.request(
            "GET", url, headers={"Authorization": "Bearer s3cret", "Cookie": "session=abc"}
        ).json()
        plain = pool.request("GET", url).json()
        override = pool.request("GET", url, headers=[("x-test", "mine")]).json()
    assert secret["authorization"] == "Bearer s3cret" and secret["cookie"] == "session=abc"
    assert plain["connection"] == secret["connection"]  # same connection, reused
    assert plain["authorization"] == "" and plain["cookie"] == ""
    assert plain["x_test"] == "pool-default" and override["x_test"] == "mine"
    assert override["connection"] == secret["connection"]


def test_not_reused_after_connection_close_or_unread_body(private_nginx: PrivateNginx) -> None:
    web = private_nginx
    with HTTPPool() as pool:
        a, _ = conn_of(pool, web.url("/conn"))
        assert pool.request("GET", web.url("/close")).status == 200  # Connection: close
        b, _ = conn_of(pool, web.url("/conn"))
        with pool.stream("GET", web.url("/bytes/1048576")) as resp:
            assert len(next(resp.iter_bytes(1024))) <= 1024  # leave most of it unread
        assert resp.closed
        c, _ = conn_of(pool, web.url("/conn"))
        with pool.stream("GET", web.url("/bytes/65536")) as resp:
            assert sum(len(x) for x in resp.iter_bytes()) == 65536
        d, count = conn_of(pool, web.url("/conn"))
    assert len({a, b, c}) == 3
    assert d == c and count == 3  # a fully read stream gives its connection back


class _Http10Server:
    """A loopback server that answers with HTTP/1.0 (no keep-alive) and keeps the socket."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)
        for c in self._held:
            c.close()


@pytest.fixture
def http10() -> Iterator[_Http10Server]:
    server = _Http10Server()
    yield server
    server.close()


def test_http10_response_is_not_reused(http10: _Http10Server) -> None:
    with HTTPPool() as pool:
        for _ in range(3):
            assert pool.request("GET", f"http://127.0.0.1:{http10.port}/").body == b"ok"
        assert pool.stats().created_total == 3
    assert http10.accepted == 3


def test_max_requests_per_connection(private_nginx: PrivateNginx) -> None:
    with HTTPPool(max_requests=3, headers=UA) as pool:
        for _ in range(7):
            pool.request("GET", private_nginx.url("/"))
    entries = ours(private_nginx, 7)
    assert max(e.connection_requests for e in entries) == 3
    assert len({e.connection for e in entries}) == 3


def test_max_total_evicts_idle_connection_of_another_origin(private_nginx: PrivateNginx) -> None:
    with HTTPPool(max_per_host=1, max_total=1) as pool:
        a, _ = conn_of(pool, private_nginx.url("/conn"))
        b, _ = conn_of(pool, f"http://localhost:{private_nginx.port}/conn")  # other origin
        c, _ = conn_of(pool, private_nginx.url("/conn"))
        stats = pool.stats()
    assert len({a, b, c}) == 3
    assert stats.created_total == 3 and stats.size <= 1


def test_post_body_and_head(private_nginx: PrivateNginx) -> None:
    with HTTPPool() as pool:
        assert pool.request("POST", private_nginx.url("/post"), body="x" * 5000).body == b"5000\n"
        head = pool.request("HEAD", private_nginx.url("/bytes/1024"))
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == "1024"
        _, count = conn_of(pool, private_nginx.url("/conn"))
        assert count == 3


def test_request_timeout(private_nginx: PrivateNginx) -> None:
    with HTTPPool() as pool, pytest.raises(TimeoutError):
        pool.request("GET", private_nginx.url("/slow/1048576"), timeout=0.2)


def test_tls_verification_on_by_default(tls_nginx: object) -> None:
    web = tls_nginx
    with HTTPPool() as pool:
        with pytest.raises(ssl.SSLCertVerificationError):
            pool.request("GET", web.tls_url("/"))  # type: ignore[attr-defined]
        assert pool.stats().size == 0  # the failed connection did not stay in the pool


def test_tls_with_ca_file_and_keys_per_tls_settings(tls_nginx: object, certs: object) -> None:
    web = tls_nginx
    trusted = TLSConfig(ca_file=str(certs.ca))  # type: ignore[attr-defined]
    sni = TLSConfig(ca_file=str(certs.ca), server_hostname="localhost")  # type: ignore[attr-defined]
    with HTTPPool(tls=trusted) as pool:
        url = web.tls_url("/echo-headers")  # type: ignore[attr-defined]
        first = pool.request("GET", url).json()
        again = pool.request("GET", url).json()
        other = pool.request("GET", url, tls=sni).json()
        unverified = pool.request("GET", url, tls=TLSConfig(verify=False)).json()
        assert first["connection"] == again["connection"]
        assert len({first["connection"], other["connection"], unverified["connection"]}) == 3
        assert len(pool.stats().per_key) == 3
        wrong = TLSConfig(ca_file=str(certs.other_ca))  # type: ignore[attr-defined]
        with pytest.raises(ssl.SSLCertVerificationError):
            pool.request("GET", url, tls=wrong)


def test_connection_refused_fails_fast() -> None:
    from servers import free_port

    with HTTPPool(acquire_timeout=30) as pool, pytest.raises(ConnectionRefusedError):
        pool.request("GET", f"http://127.0.0.1:{free_port()}/")


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"max_per_host \(0\) must be >= 1"):
        HTTPPool(max_per_host=0)
    with pytest.raises(ValueError, match=r"max_total \(2\) must be >= max_per_host \(4\)"):
        HTTPPool(max_per_host=4, max_total=2)
    with HTTPPool() as pool:
        with pytest.raises(ValueError, match="ftp://x"):
            pool.request("GET", "ftp://x/")
        with pytest.raises(TypeError, match=r"body \(dict\)"):
            pool.request("POST", "http://127.0.0.1:9/", body={"a": 1})  # type: ignore[arg-type]


def test_response_repr_hides_secrets(private_nginx: PrivateNginx) -> None:
    from poolkit.http import Headers

    headers = Headers([("Set-Cookie", "id=hunter2"), ("Content-Type", "text/plain")])
    assert "hunter2" not in repr(headers) and "text/plain" in repr(headers)
    assert headers.get_all("set-cookie") == ["id=hunter2"]
    with HTTPPool() as pool:
        resp = pool.request("GET", private_nginx.url("/echo-headers"))
    assert json.loads(resp.text)["connection"]


def test_max_lifetime_and_idle_timeout_replace_connections(private_nginx: PrivateNginx) -> None:
    from helpers import FakeClock

    clock = FakeClock()
    url = private_nginx.url("/conn")
    with HTTPPool(max_lifetime=60, idle_timeout=None, clock=clock) as pool:
        a, _ = conn_of(pool, url)
        clock.advance(30)
        assert conn_of(pool, url)[0] == a
        clock.advance(31)  # past the lifetime (the core may take up to 5 % off it)
        b, count = conn_of(pool, url)
        assert b != a and count == 1
    with HTTPPool(idle_timeout=10, max_lifetime=None, clock=clock) as pool:
        c, _ = conn_of(pool, url)
        clock.advance(5)
        assert conn_of(pool, url)[0] == c
        clock.advance(11)
        pool.maintain()
        assert pool.stats().size == 0
        d, _ = conn_of(pool, url)
        assert d != c


def test_parser_option(sync_parser: str) -> None:
    with HTTPPool() as pool:
        assert pool.parser == sync_parser
    with pytest.raises(ValueError, match=r"parser \('h2'\) must be one of"):
        HTTPPool(parser="h2")


def test_client_certificate_is_part_of_the_key(tls_nginx: object, certs: object) -> None:
    web = tls_nginx
    url = web.tls_url("/echo-headers")  # type: ignore[attr-defined]
    anonymous = TLSConfig(ca_file=str(certs.ca))  # type: ignore[attr-defined]
    mtls = TLSConfig(
        ca_file=str(certs.ca),  # type: ignore[attr-defined]
        client_cert=str(certs.client_cert),  # type: ignore[attr-defined]
        client_key=str(certs.client_key),  # type: ignore[attr-defined]
    )
    with HTTPPool() as pool:
        a = pool.request("GET", url, tls=anonymous)
        b = pool.request("GET", url, tls=mtls)
        a2 = pool.request("GET", url, tls=anonymous)
    assert a.headers["x-client-verify"] == "NONE" == a2.headers["x-client-verify"]
    assert b.headers["x-client-verify"] == "SUCCESS"
    assert a.json()["connection"] == a2.json()["connection"] != b.json()["connection"]


def test_tls_config_key_follows_file_contents(tmp_path: object) -> None:
    from pathlib import Path

    ca = Path(str(tmp_path)) / "ca.pem"
    ca.write_text("one")
    first = TLSConfig(ca_file=str(ca))
    assert first == TLSConfig(ca_file=str(ca))
    ca.write_text("two")  # a rotated bundle at the same path is a different key
    assert first != TLSConfig(ca_file=str(ca))
    with pytest.raises(ValueError, match=r"client_key \('k.pem'\) needs a client_cert"):
        TLSConfig(client_key="k.pem")


def test_invalid_header_error_never_shows_the_value(private_nginx: PrivateNginx) -> None:
    secret = {"Authorization": "Bearer Tok-9d2f\n"}
    with HTTPPool() as pool:
        with pytest.raises(ValueError, match="invalid request") as info:
            pool.request("GET", private_nginx.url("/"), headers=secret)
    shown = repr(info.value) + repr(info.value.__cause__) + repr(info.value.__context__)
    assert "Tok-9d2f" not in shown
