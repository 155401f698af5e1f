"""``HTTPPool``: persistent HTTP/1.1 connections per origin for threads."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from poolkit.http._fast import ResponseState, encode_request, httptools
from poolkit.http._models import (
    DEFAULT_TLS,
    IDEMPOTENT_METHODS,
    ConnectTimeout,
    Headers,
    HeadersInput,
    Origin,
    Response,
    TLSConfig,
    encode_body,
    header_items,
    parse_url,
    wire_headers,
)
from poolkit.http._origins import OriginTable, PoolSettings, keyed_pool
from poolkit.keyed import KeyedPoolStats

__all__ = ["HTTPPool", "StreamResponse"]

_DEFAULT: Any = object()
_PARSERS = ("auto", "httptools", "http.client")
_RECV_SIZE = 256 * 1024
_POLLIN_ANY = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
# What a reused keep-alive connection raises when the server had closed it meanwhile.
_STALE_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    http.client.CannotSendRequest,
    http.client.NotConnected,
    ssl.SSLEOFError,
)


class _Conn:
    """One TCP (+TLS) connection; the subclasses speak HTTP/1.1 over it.

    The pool creates it unconnected (that never fails); the borrower connects it on first
    use, so a refused connection or a bad certificate reaches that caller at once instead
    of being retried by the pool until the acquire timeout.
    """

    __slots__ = ("ctx", "origin", "poller", "requests", "sock", "timeout")

    def __init__(self, origin: Origin, ctx: ssl.SSLContext | None, connect_timeout: float | None):
        self.origin = origin
        self.ctx = ctx
        self.timeout = connect_timeout
        self.requests = 0
        self.sock: Any = None
        self.poller: Any = None

    def connect(self) -> None:
        """Open the TCP connection and run the TLS handshake (verifying the server)."""
        origin = self.origin
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=self.timeout)
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {origin!r} timed out") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ctx is not None:
                tls = origin.tls or DEFAULT_TLS
                name = tls.server_hostname or origin.host
                try:
                    sock = self.ctx.wrap_socket(sock, server_hostname=name)
                except TimeoutError as exc:
                    raise ConnectTimeout(f"TLS handshake with {origin!r} timed out") from exc
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock.fileno(), _POLLIN_ANY)
        self._connected(sock)

    def _connected(self, sock: Any) -> None:
        pass

    def is_fresh(self) -> bool:
        """An idle HTTP/1.1 connection must have nothing to read: data or EOF means stale."""
        sock = self.sock
        if sock.fileno() < 0:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        return not self.poller.poll(0)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    # -- the exchange, implemented per parser ------------------------------------------

    @staticmethod
    def prepare(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        """Validate and encode a request before a connection is borrowed (ValueError).

        The base checks with the fast path's encoder (its errors never show a header
        value, where ``http.client``'s would: an Authorization token, say) and encodes
        nothing: ``http.client`` writes the request itself.
        """
        encode_request(method, target, headers, None)
        return None

    def exchange(
        self,
        prepared: Any,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]]]:
        """Send the request; return the response head (status, reason, headers)."""
        raise NotImplementedError

    def read_all(self) -> bytes:
        """The rest of the body."""
        raise NotImplementedError

    def read_chunk(self, size: int) -> bytes:
        """Up to ``size`` bytes of body as they arrive (``b""`` at the end)."""
        raise NotImplementedError

    def body_done(self) -> bool:
        """True once the whole response was read."""
        raise NotImplementedError

    def reusable(self) -> bool:
        """True when the exchange is complete and the server keeps the connection open."""
        raise NotImplementedError


class _StdlibConn(_Conn):
    """HTTP/1.1 through the standard library's ``http.client.HTTPConnection``."""

    __slots__ = ("http", "resp")

    def __init__(self, origin: Origin, ctx: ssl.SSLContext | None, connect_timeout: float | None):
        super().__init__(origin, ctx, connect_timeout)
        self.http: Any = None
        self.resp: Any = None

    def _connected(self, sock: Any) -> None:
        conn = http.client.HTTPConnection(self.origin.host, self.origin.port)
        conn.sock = sock
        conn.auto_open = 0  # never reconnect behind the pool's back
        self.http = conn

    def exchange(
        self,
        prepared: Any,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]]]:
        h = self.http
        h.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            h.putheader(name, value)
        h.endheaders(body)
        resp = self.resp = h.getresponse()
        return resp.status, resp.reason, resp.getheaders()

    def read_all(self) -> bytes:
        data: bytes = self.resp.read()
        return data

    def read_chunk(self, size: int) -> bytes:
        resp = self.resp
        chunk: bytes = resp.read1(size)
        if not chunk and resp.length:
            raise http.client.IncompleteRead(b"", resp.length)
        if resp.length == 0:
            resp.read()  # lets http.client mark the exchange complete
        return chunk

    def body_done(self) -> bool:
        return bool(self.resp.isclosed())

    def reusable(self) -> bool:
        resp = self.resp
        return bool(resp.isclosed() and not resp.will_close)

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
        if self.http is not None:
            self.http.close()
        super().close()


class _FastConn(_Conn):
    """HTTP/1.1 with the llhttp parser (``httptools``) straight over the socket."""

    __slots__ = ("state",)

    def __init__(self, origin: Origin, ctx: ssl.SSLContext | None, connect_timeout: float | None):
        super().__init__(origin, ctx, connect_timeout)
        self.state: Any = None

    @staticmethod
    def prepare(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        return encode_request(method, target, headers, body)

    def _recv(self) -> None:
        data = self.sock.recv(_RECV_SIZE)
        if data:
            self.state.feed(data)
        else:
            self.state.eof()

    def exchange(
        self,
        prepared: Any,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]]]:
        state = self.state = ResponseState(method == "HEAD")
        self.sock.sendall(prepared)
        while not state.head_done:
            self._recv()
        return state.status, state.reason, state.headers

    def read_all(self) -> bytes:
        state = self.state
        while not state.msg_done:
            self._recv()
        chunks = state.chunks
        if not chunks:
            return b""
        data: bytes = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        state.buffered = 0
        return data

    def read_chunk(self, size: int) -> bytes:
        state = self.state
        while not state.chunks:
            if state.msg_done:
                return b""
            self._recv()
        data: bytes = state.pop()
        if len(data) > size:
            state.chunks.appendleft(data[size:])
            state.buffered += len(data) - size
            data = data[:size]
        return data

    def body_done(self) -> bool:
        state = self.state
        return bool(state.msg_done and not state.chunks)

    def reusable(self) -> bool:
        state = self.state
        return bool(state.msg_done and not state.chunks and state.keep_alive)


def _close(conn: _Conn) -> None:
    conn.close()


class StreamResponse:
    """A response whose body is read on demand; the connection returns to the pool at the end.

    The connection is reused once the body has been read to the end; closing the stream
    early (or leaving the ``with`` block) closes the connection instead, since unread bytes
    would corrupt the next response.

    Example::

        with pool.stream("GET", url) as resp:
            for chunk in resp.iter_bytes():
                sink.write(chunk)
    """

    __slots__ = ("_conn", "_lease", "headers", "reason", "status")

    def __init__(
        self, lease: Any, conn: _Conn, head: tuple[int, str, list[tuple[str, str]]]
    ) -> None:
        self._lease = lease
        self._conn = conn
        self.status = head[0]
        self.reason = head[1]
        self.headers = Headers(head[2])

    @property
    def closed(self) -> bool:
        """True once the connection went back to the pool or was closed."""
        return self._lease is None

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """Yield the body in chunks of at most ``chunk_size`` bytes as they arrive."""
        conn = self._conn
        while self._lease is not None:
            try:
                chunk = conn.read_chunk(chunk_size)
            except BaseException:
                self._finish(reuse=False)
                raise
            if conn.body_done():
                # hand the connection back before the last chunk reaches the caller
                self._finish(reuse=conn.reusable())
            if chunk:
                yield chunk
            elif self._lease is not None:
                self._finish(reuse=False)

    def read(self) -> bytes:
        """Read the rest of the body."""
        if self._lease is None:
            return b""
        try:
            data = self._conn.read_all()
        except BaseException:
            self._finish(reuse=False)
            raise
        self._finish(reuse=self._conn.reusable())
        return data

    def close(self) -> None:
        """Give the connection back: reused if the body was fully read, else closed."""
        if self._lease is not None:
            self._finish(reuse=self._conn.reusable())

    def _finish(self, reuse: bool) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        if reuse:
            lease.release()
        else:
            lease.discard()

    def __enter__(self) -> StreamResponse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._lease is None else "open"
        return f"<StreamResponse [{self.status} {self.reason}] {state}>"


class HTTPPool:
    """Thread-safe pool of persistent HTTP/1.1 connections, one keyed pool per origin.

    Connections are keyed by (scheme, host, port, TLS settings) and never cross keys.
    An idle connection is checked without blocking before reuse (readable or EOF means
    the server closed it); an idempotent request that still fails because the server
    closed a reused connection is retried once on a fresh connection.

    Parameters: ``max_per_host`` connections per origin, ``max_total`` over all origins,
    ``idle_timeout`` and ``max_lifetime`` in seconds (the lifetime makes DNS changes
    visible), ``max_requests`` per connection, ``connect_timeout``, ``timeout`` (default
    read/write timeout of a request), ``acquire_timeout`` (wait for a free connection),
    ``tls`` (default :class:`TLSConfig`: verification on), ``headers`` (sent with every
    request, copied each time), ``parser`` (``"auto"``: the llhttp parser of ``httptools``
    over the socket when installed, else the standard library's ``http.client``),
    ``clock`` (monotonic time source; tests pass a fake one).

    Example::

        with HTTPPool(max_per_host=8) as pool:
            resp = pool.request("GET", "https://example.org/", headers={"Accept": "*/*"})
            print(resp.status, resp.body[:40])
    """

    def __init__(
        self,
        *,
        max_per_host: int = 10,
        max_total: int | None = 100,
        idle_timeout: float | None = 60.0,
        max_lifetime: float | None = 600.0,
        max_requests: int | None = None,
        connect_timeout: float | None = 10.0,
        timeout: float | None = 30.0,
        acquire_timeout: float = 30.0,
        tls: TLSConfig | None = None,
        headers: HeadersInput = None,
        parser: str = "auto",
        name: str = "http",
        clock: Callable[[], float] | None = None,
    ) -> None:
        if parser not in _PARSERS:
            raise ValueError(f"parser ({parser!r}) must be one of {_PARSERS}")
        if parser == "httptools" and httptools is None:
            raise ValueError(
                "parser ('httptools') needs the httptools package: pip install httptools"
            )
        fast = parser == "httptools" or (parser == "auto" and httptools is not None)
        self._conn_class: type[_Conn] = _FastConn if fast else _StdlibConn
        self.parser = "httptools" if fast else "http.client"
        self._settings = PoolSettings(
            max_per_host=max_per_host,
            max_total=max_total,
            idle_timeout=idle_timeout,
            max_lifetime=max_lifetime,
            max_requests=max_requests,
            connect_timeout=connect_timeout,
            acquire_timeout=acquire_timeout,
            name=name,
            clock=clock,
        )
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout ({timeout}) must be > 0 or None")
        self._timeout = timeout
        self._tls = tls or DEFAULT_TLS
        self._default_headers = tuple(header_items(headers))
        self._contexts: dict[TLSConfig, ssl.SSLContext] = {}
        self._ctx_lock = threading.Lock()
        self._origins = OriginTable(self._tls)
        self._pools = keyed_pool(self._settings, self._create, _close)
        self.name = name

    # -- connections -------------------------------------------------------------------

    def _context(self, tls: TLSConfig) -> ssl.SSLContext:
        ctx = self._contexts.get(tls)
        if ctx is None:
            with self._ctx_lock:
                ctx = self._contexts.get(tls)
                if ctx is None:
                    ctx = self._contexts[tls] = tls.context()
        return ctx

    def _create(self, origin: Origin) -> _Conn:
        ctx = self._context(origin.tls) if origin.tls is not None else None
        return self._conn_class(origin, ctx, self._settings.connect_timeout)

    # -- requests ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        headers: HeadersInput,
        body: Any,
        timeout: float | None,
        tls: TLSConfig | None,
    ) -> tuple[Any, _Conn, tuple[int, str, list[tuple[str, str]]]]:
        """Send a request and read the response head; returns (lease, connection, head)."""
        scheme, host, port, host_header, target = parse_url(url)
        origin = self._origins.get(scheme, host, port, tls)
        payload = encode_body(body)
        method = method.upper()
        wire = wire_headers(host_header, self._default_headers, header_items(headers), payload)
        prepared = self._conn_class.prepare(method, target, wire, payload)
        if timeout is _DEFAULT:
            timeout = self._timeout
        pool = self._pools
        retried = False
        stale = 0
        while True:
            lease = pool.get(origin)
            conn: _Conn = lease.resource
            reused = conn.requests > 0
            if reused and not conn.is_fresh():
                # the non-blocking readability check: bytes or EOF on an idle connection
                # mean the server closed it (or broke the protocol): never reuse it
                lease.discard()
                stale += 1
                if stale > self._settings.max_per_host:
                    pool.close_idle(origin)
                continue
            try:
                if conn.sock is None:
                    conn.connect()
                if conn.timeout != timeout:
                    conn.sock.settimeout(timeout)
                    conn.timeout = timeout
                conn.requests += 1
                head = conn.exchange(prepared, method, target, wire, payload)
            except BaseException as exc:
                lease.discard()
                if (
                    reused
                    and not retried
                    and method in IDEMPOTENT_METHODS
                    and isinstance(exc, _STALE_ERRORS)
                ):
                    # The server closed an idle connection we had: its idle siblings are
                    # suspect too, so drop them and retry once on a new connection.
                    retried = True
                    pool.close_idle(origin)
                    continue
                raise
            return lease, conn, head

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersInput = None,
        body: bytes | str | None = None,
        timeout: float | None = _DEFAULT,
        tls: TLSConfig | None = None,
    ) -> Response:
        """Send a request and read the whole response.

        ``timeout`` bounds each socket read/write (default: the pool's ``timeout``);
        ``tls`` overrides the pool's TLS settings for this request (a separate key).
        Redirects are not followed. Raises ``OSError`` (``TimeoutError``,
        ``ConnectionError``), ``http.client.HTTPException`` or ``poolkit.PoolTimeout``.
        """
        lease, conn, head = self._send(method, url, headers, body, timeout, tls)
        try:
            data = conn.read_all()
        except BaseException:
            lease.discard()
            raise
        if conn.reusable():
            lease.release()
        else:
            lease.discard()
        return Response(head[0], Headers(head[2]), data, head[1])

    def stream(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersInput = None,
        body: bytes | str | None = None,
        timeout: float | None = _DEFAULT,
        tls: TLSConfig | None = None,
    ) -> StreamResponse:
        """Send a request and return once the response head arrived; read the body later.

        Use it as a context manager so the connection always goes back (see
        :class:`StreamResponse`).
        """
        lease, conn, head = self._send(method, url, headers, body, timeout, tls)
        return StreamResponse(lease, conn, head)

    # -- lifecycle ---------------------------------------------------------------------

    def maintain(self) -> None:
        """Close idle connections past ``idle_timeout`` or ``max_lifetime`` now, in every origin.

        A background thread does this periodically; call it in tests or idle processes.
        """
        keyed = self._pools
        for key in list(keyed.keys()):
            keyed.pool_for(key).maintain()
        keyed.sweep()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._pools.closed

    def stats(self) -> KeyedPoolStats[Origin]:
        """Pool statistics: totals plus ``per_key`` (one :class:`poolkit.PoolStats` per origin)."""
        return self._pools.stats()

    def close(self) -> None:
        """Close every idle connection and refuse new requests."""
        self._pools.close()

    def __enter__(self) -> HTTPPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HTTPPool {self.name!r} origins={len(self._origins)}>"
