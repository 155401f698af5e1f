"""The TCP fault proxy really does what each mode says."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from helpers import wait_for
from servers import EchoServer, TcpProxy, free_port, proxied

TIMEOUT = 5.0


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


def connect(proxy: TcpProxy, timeout: float = TIMEOUT) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_pass_forwards_both_ways_and_counts(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as a, connect(proxy) as b:
        assert roundtrip(a, b"hello") == b"hello"
        assert roundtrip(b, b"world!") == b"world!"
        assert proxy.connections == 2
        assert proxy.accepted_total == 2
        assert proxy.bytes_up == proxy.bytes_down == 11
    wait_for(lambda: proxy.connections == 0, what="flows to close")


@pytest.mark.parametrize("mode", ["pass", "latency"])
def test_large_transfer_is_intact(echo, tcp_proxy, mode):
    proxy = tcp_proxy(echo.address, mode=mode, latency_s=0.002)
    payload = bytes(range(256)) * 16384  # 4 MiB, more than the proxy buffers
    got = bytearray()
    with connect(proxy) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
        sender.join(TIMEOUT)
    assert bytes(got) == payload


def test_half_close_is_propagated(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
    assert got == b"last words"  # echoed, then EOF once the server closed its side


def test_refuse_refuses_new_connections_only(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as old:
        proxy.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            connect(proxy).close()
        assert roundtrip(old) == b"ping"
        proxy.set_mode("pass")
        with connect(proxy) as new:
            assert roundtrip(new) == b"ping"


def test_reset_resets_existing_and_new(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as old:
        assert roundtrip(old) == b"ping"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            old.recv(10)
    with pytest.raises(ConnectionResetError), connect(proxy) as new:
        new.recv(10)  # the RST can even beat connect()'s own completion check
    assert proxy.connections == 0
    proxy.set_mode("pass")
    with connect(proxy) as again:
        assert roundtrip(again) == b"ping"


def test_freeze_blackholes_flows_and_new_connects(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy, timeout=0.3) as s:
        assert roundtrip(s) == b"ping"
        proxy.set_mode("freeze")
        s.sendall(b"held")
        with pytest.raises(socket.timeout):
            s.recv(10)  # nothing comes back, and no FIN or RST either
        with pytest.raises(socket.timeout):
            connect(proxy, timeout=0.3).close()  # SYN dropped: connect hangs
        assert proxy.connections == 1
        proxy.set_mode("pass")
        s.settimeout(TIMEOUT)
        assert s.recv(10) == b"held"  # the held bytes are delivered after the thaw
        assert roundtrip(s) == b"ping"


def test_deaf_hangs_new_connects_but_keeps_flows(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as old:
        proxy.set_mode("deaf")
        with pytest.raises(socket.timeout):
            connect(proxy, timeout=0.3).close()
        assert roundtrip(old) == b"ping"
        proxy.set_mode("pass")
        with connect(proxy) as new:
            assert roundtrip(new) == b"ping"
            assert proxy.connections == 2  # fillers used to jam the queue are not flows


def test_latency_delays_each_direction(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address, mode="latency", latency_s=0.05)
    with connect(proxy) as s:
        start = time.monotonic()
        assert roundtrip(s) == b"ping"
        # held at least latency_s on the way up and again on the way down: a lower bound
        assert time.monotonic() - start >= 0.1
        proxy.set_mode("pass")
        assert roundtrip(s) == b"ping"


def test_cut_all_closes_or_resets_flows(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with connect(proxy) as a, connect(proxy) as b:
        assert roundtrip(a) == b"ping"
        assert roundtrip(b) == b"ping"
        assert proxy.cut_all() == 2
        assert a.recv(10) == b""
        assert b.recv(10) == b""
    with connect(proxy) as c:
        assert roundtrip(c) == b"ping"
        assert proxy.cut_all(reset=True) == 1
        with pytest.raises(ConnectionResetError):
            c.recv(10)


def test_dead_target_resets_the_client(tcp_proxy):
    proxy = tcp_proxy(("127.0.0.1", free_port()))
    with pytest.raises(ConnectionResetError), connect(proxy) as s:
        s.recv(10)
    assert proxy.connections == 0


def test_target_reset_is_passed_on(tcp_proxy):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        proxy = tcp_proxy(server.getsockname())
        with connect(proxy) as client:
            peer, _ = server.accept()
            peer.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            peer.close()
            with pytest.raises(ConnectionResetError):
                client.recv(10)


def test_mode_switches_in_any_order(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    for mode in ("deaf", "refuse", "freeze", "reset", "deaf", "freeze", "refuse", "pass"):
        proxy.set_mode(mode)
        assert proxy.mode == mode
    with connect(proxy) as s:
        assert roundtrip(s) == b"ping"


def test_bad_mode_is_named(echo, tcp_proxy):
    proxy = tcp_proxy(echo.address)
    with pytest.raises(ValueError, match="'slow'"):
        proxy.set_mode("slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1"):
        TcpProxy(echo.address, latency_s=-1)


def test_close_stops_the_thread_and_closes_everything(echo):
    before = {t.name for t in threading.enumerate()}
    with proxied(echo.address) as proxy:
        s = connect(proxy)
        assert roundtrip(s) == b"ping"
        proxy.set_mode("deaf")
    assert s.recv(10) == b""  # the flow was closed
    s.close()
    assert not [
        t for t in threading.enumerate() if t.name.startswith("TcpProxy") and t.name not in before
    ]
    proxy.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        proxy.set_mode("pass")
