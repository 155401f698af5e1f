"""``HTTPPool``: persistent HTTP/1.1 connections per origin for threads, on ``http.client``."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

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
from poolkit.http._origins import PoolSettings, keyed_pool
from poolkit.keyed import KeyedPoolStats

__all__ = ["HTTPPool", "StreamResponse"]

_DEFAULT: Any = object()
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
    """One TCP (+TLS) connection driven by ``http.client.HTTPConnection``.

    The pool creates it unconnected (that never fails); the borrower connects it on first
    use, so a refused connection or a bad certificate reaches that caller at once instead
    of being retried by the pool until the acquire timeout.
    """

    __slots__ = ("ctx", "http", "origin", "poller", "requests", "sock", "timeout")

    def __init__(self, origin: Origin, ctx: ssl.SSLContext | None, connect_timeout: float | None):
        self.origin = origin
        self.ctx = ctx
        self.timeout = connect_timeout
        self.requests = 0
        self.sock: Any = None
        self.http: Any = None
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
        conn = http.client.HTTPConnection(origin.host, origin.port)
        conn.sock = sock
        conn.auto_open = 0  # never reconnect behind the pool's back
        self.http = conn
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock.fileno(), _POLLIN_ANY)

    def is_fresh(self) -> bool:
        """An idle HTTP/1.1 connection must have nothing to read: data or EOF means stale."""
        sock = self.sock
        if sock.fileno() < 0:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        return not self.poller.poll(0)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.sock is not None:
            self.sock.close()


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

    __slots__ = ("_lease", "_resp", "headers", "reason", "status")

    def __init__(self, lease: Any, resp: http.client.HTTPResponse) -> None:
        self._lease = lease
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason
        self.headers = Headers(resp.getheaders())

    @property
    def closed(self) -> bool:
        """True once the connection went back to the pool or was closed."""
        return self._lease is None

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """Yield the body in chunks of at most ``chunk_size`` bytes as they arrive."""
        resp = self._resp
        while self._lease is not None:
            try:
                chunk = resp.read1(chunk_size)
                if not chunk and resp.length:
                    raise http.client.IncompleteRead(b"", resp.length)
                if resp.length == 0:
                    resp.read()  # lets http.client mark the exchange complete
            except BaseException:
                self._finish(reuse=False)
                raise
            if resp.isclosed():
                # hand the connection back before the last chunk reaches the caller
                self._finish(reuse=not resp.will_close)
            if chunk:
                yield chunk
            elif self._lease is not None:
                self._finish(reuse=False)

    def read(self) -> bytes:
        """Read the rest of the body."""
        if self._lease is None:
            return b""
        try:
            data = self._resp.read()
        except BaseException:
            self._finish(reuse=False)
            raise
        self._finish(reuse=not self._resp.will_close)
        return data

    def close(self) -> None:
        """Give the connection back: reused if the body was fully read, else closed."""
        if self._lease is not None:
            self._finish(reuse=self._resp.isclosed() and not self._resp.will_close)

    def _finish(self, reuse: bool) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        if reuse:
            lease.release()
        else:
            self._resp.close()
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
    request, copied each time), ``clock`` (monotonic time source; tests pass a fake one).

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
        name: str = "http",
        clock: Callable[[], float] | None = None,
    ) -> None:
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
        self._origins: dict[tuple[str, str, int, TLSConfig | None], Origin] = {}
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
        return _Conn(origin, ctx, self._settings.connect_timeout)

    def _origin(self, scheme: str, host: str, port: int, tls: TLSConfig | None) -> Origin:
        tls_key = (tls or self._tls) if scheme == "https" else None
        key = (scheme, host, port, tls_key)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins.setdefault(key, Origin(scheme, host, port, tls_key))
        return origin

    # -- requests ----------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        headers: HeadersInput,
        body: Any,
        timeout: float | None,
        tls: TLSConfig | None,
    ) -> tuple[Any, http.client.HTTPResponse]:
        """Send a request and read the response head; returns (lease, response)."""
        scheme, host, port, host_header, target = parse_url(url)
        origin = self._origin(scheme, host, port, tls)
        payload = encode_body(body)
        method = method.upper()
        wire = wire_headers(host_header, self._default_headers, header_items(headers), payload)
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
                h = conn.http
                h.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in wire:
                    h.putheader(name, value)
                h.endheaders(payload)
                conn.requests += 1
                resp = h.getresponse()
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
            return lease, resp

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
        lease, resp = self._send(method, url, headers, body, timeout, tls)
        try:
            data = resp.read()
        except BaseException:
            resp.close()
            lease.discard()
            raise
        if resp.will_close:
            lease.discard()
        else:
            lease.release()
        return Response(resp.status, Headers(resp.getheaders()), data, resp.reason)

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
        lease, resp = self._send(method, url, headers, body, timeout, tls)
        return StreamResponse(lease, resp)

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
