"""``AsyncHTTPPool``: persistent HTTP/1.1 connections per origin for asyncio (httptools or h11)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import select
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any

import h11

from poolkit.http._fast import ResponseState, encode_request, httptools
from poolkit.http._models import (
    DEFAULT_TLS,
    IDEMPOTENT_METHODS,
    ConnectTimeout,
    Headers,
    HeadersInput,
    Origin,
    ProtocolError,
    Response,
    TLSConfig,
    encode_body,
    header_items,
    parse_url,
    wire_headers,
)
from poolkit.http._origins import OriginTable, PoolSettings, async_keyed_pool
from poolkit.keyed import KeyedPoolStats

__all__ = ["AsyncHTTPPool", "AsyncStreamResponse"]


_DEFAULT: Any = object()
_HIGH_WATER = 256 * 1024
_POLLIN_ANY = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_PARSERS = ("auto", "httptools", "h11")
_NEED_DATA = h11.NEED_DATA
_DONE = h11.DONE
_STALE_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
)


class _Conn(asyncio.Protocol):
    """One connection: an asyncio transport plus an HTTP/1.1 parser (see the subclasses).

    The event loop watches the socket all the time, so bytes or EOF arriving while the
    connection is idle in the pool mark it stale at once (``data_received``/``eof_received``),
    which is the readability check, paid for by the loop instead of a syscall per borrow
    (``is_fresh`` adds a non-blocking ``poll`` for what the loop has not seen yet).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.error: BaseException | None = None
        self.busy = False
        self.stale = False
        self.paused = False
        self.requests = 0
        self.waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None
        self.poller: Any = None
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            poller = select.poll()
            poller.register(sock.fileno(), _POLLIN_ANY)
            self.poller = poller

    def eof_received(self) -> bool:
        self.eof = True
        self.stale = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.eof = True
        self.stale = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        w = self.write_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        w, self.write_waiter = self.write_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait(self) -> None:
        error = self.error
        if isinstance(error, TimeoutError):
            raise TimeoutError("HTTP request timed out")
        fut = self.waiter = self.loop.create_future()
        await fut

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # -- helpers for the pool ----------------------------------------------------------

    def is_fresh(self) -> bool:
        """Idle and nothing arrived: no bytes, no EOF, transport open, socket not readable."""
        t = self.transport
        if self.stale or t is None or t.is_closing():
            return False
        poller = self.poller
        return poller is None or not poller.poll(0)

    def close(self) -> None:
        t = self.transport
        if t is not None:
            t.close()

    def timed_out(self) -> None:
        """Called by the request timer: fail the current read with TimeoutError."""
        self.error = TimeoutError("HTTP request timed out")
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_exception(TimeoutError("HTTP request timed out"))
        ww = self.write_waiter
        if ww is not None and not ww.done():
            ww.set_exception(TimeoutError("HTTP request timed out"))

    async def _write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            raise ConnectionResetError("connection closed before the request was sent")
        t.write(data)
        w = self.write_waiter
        if w is not None:
            await w

    def _disconnected(self) -> BaseException:
        if self.error is not None and not isinstance(self.error, TimeoutError):
            return http.client.RemoteDisconnected(
                f"Remote end closed connection without response ({self.error!r})"
            )
        return http.client.RemoteDisconnected("Remote end closed connection without response")

    # -- the exchange, implemented per parser ------------------------------------------

    @staticmethod
    def prepare(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        """Validate and encode a request before any connection is borrowed (ValueError)."""
        raise NotImplementedError

    async def send_request(self, prepared: Any, method: str, body: bytes | None) -> None:
        raise NotImplementedError

    async def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        """Wait for the response head: (status, reason, headers)."""
        raise NotImplementedError

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once the body is complete."""
        raise NotImplementedError

    def finish_cycle(self) -> bool:
        """After a complete exchange: ready for the next request (True) or not reusable."""
        raise NotImplementedError


class _H11Conn(_Conn):
    """The portable parser: ``h11`` (pure Python), fed from a byte buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        super().__init__(loop, origin)
        self.h11 = h11.Connection(h11.CLIENT)
        self.buf = bytearray()
        self.response_started = False

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.stale = True
        self.buf += data
        if len(self.buf) > _HIGH_WATER:
            self._pause()
        self._wake()

    async def _next_event(self) -> Any:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(str(exc)) from exc
            if event is not _NEED_DATA:
                return event
            if not self.buf and not self.eof:
                await self._wait()
            if self.buf:
                data = bytes(self.buf)
                self.buf.clear()
                self._resume()
                conn.receive_data(data)
            elif self.eof:
                if conn.their_state is h11.SEND_RESPONSE and not self.response_started:
                    raise self._disconnected()
                conn.receive_data(b"")

    @staticmethod
    def prepare(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        try:
            return h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError:
            pass
        # h11's message shows the offending header value (a token, a cookie): say what is
        # wrong without it, and do not chain h11's error
        encode_request(method, target, headers, None)
        raise ValueError("invalid request: h11 refused the method, target or a header value")

    async def send_request(self, prepared: Any, method: str, body: bytes | None) -> None:
        h = self.h11
        try:
            data = h.send(prepared)
            if body:
                data += h.send(h11.Data(data=body))
            data += h.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"invalid request: {exc}") from exc
        await self._write(data)

    async def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        while True:
            event = await self._next_event()
            if type(event) is h11.Response:
                self.response_started = True
                headers = [
                    (n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()
                ]
                return event.status_code, event.reason.decode("latin-1"), headers
            if type(event) is not h11.InformationalResponse:
                raise ProtocolError(f"unexpected HTTP event {event!r}")

    async def read_chunk(self) -> bytes:
        while True:
            event = await self._next_event()
            if type(event) is h11.Data:
                if event.data:
                    return bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                return b""
            else:
                raise ProtocolError(f"unexpected HTTP event {event!r}")

    def finish_cycle(self) -> bool:
        h = self.h11
        if h.our_state is _DONE and h.their_state is _DONE and not self.stale and not self.buf:
            h.start_next_cycle()
            self.response_started = False
            self.error = None
            return True
        return False


class _FastConn(_Conn):
    """The fast parser: ``httptools`` (llhttp, in C) fed straight from ``data_received``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        super().__init__(loop, origin)
        self.state: ResponseState | None = None

    def data_received(self, data: bytes) -> None:
        state = self.state
        if not self.busy or state is None or state.msg_done:
            self.stale = True  # bytes nobody asked for: never reuse this connection
            self._wake()
            return
        try:
            state.feed(data)
        except ProtocolError as exc:
            self.error = exc
            self.stale = True
        if state.buffered > _HIGH_WATER:
            self._pause()
        self._wake()

    @staticmethod
    def prepare(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> Any:
        return encode_request(method, target, headers, body)

    async def send_request(self, prepared: Any, method: str, body: bytes | None) -> None:
        self.state = ResponseState(method == "HEAD")
        await self._write(prepared)

    def _check(self, state: ResponseState) -> None:
        error = self.error
        if error is not None and not isinstance(error, TimeoutError):
            if isinstance(error, ProtocolError):
                raise error
            if not state.got_bytes:
                raise self._disconnected()
            raise ProtocolError(f"connection failed mid-response: {error!r}")
        if self.eof:
            state.eof()

    async def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        state = self.state
        assert state is not None
        while not state.head_done:
            self._check(state)
            if state.head_done:
                break
            await self._wait()
        return state.status, state.reason, state.headers

    async def read_chunk(self) -> bytes:
        state = self.state
        assert state is not None
        while not state.chunks:
            if state.msg_done:
                return b""
            self._check(state)
            if state.msg_done or state.chunks:
                continue
            await self._wait()
        data = state.pop()
        if self.paused and state.buffered < _HIGH_WATER // 2:
            self._resume()
        return data

    def finish_cycle(self) -> bool:
        state = self.state
        if (
            state is not None
            and state.msg_done
            and state.keep_alive
            and not self.stale
            and not state.chunks
        ):
            self.state = None
            self.error = None
            return True
        return False


async def _close(conn: _Conn) -> None:
    """The pool's destroy hook: close and wait (bounded) until the transport is gone.

    A TLS transport needs a few loop turns to finish its shutdown; waiting here keeps
    ``aclose()`` from returning while sockets are still open.
    """
    t = conn.transport
    if t is None:
        return
    if not conn.lost.done():
        t.close()
        try:
            await asyncio.wait_for(asyncio.shield(conn.lost), 1.0)
        except asyncio.TimeoutError:
            t.abort()


async def _give_back(
    lease: Any, conn: _Conn, timer: asyncio.TimerHandle | None, reuse: bool
) -> None:
    """End a borrow: stop the request timer, then return the connection or close it."""
    if timer is not None:
        timer.cancel()
    conn.busy = False
    if reuse and conn.finish_cycle():
        await lease.release()
    else:
        conn.close()
        await lease.discard()


class AsyncStreamResponse:
    """A response whose body is read on demand; the connection returns at the end.

    Reused once the body was read to the end; ``aclose()`` before that closes the
    connection (unread bytes would corrupt the next response).

    Example::

        async with pool.stream("GET", url) as resp:
            async for chunk in resp.aiter_bytes():
                sink.write(chunk)
    """

    __slots__ = ("_conn", "_lease", "_timer", "headers", "reason", "status")

    def __init__(
        self,
        lease: Any,
        conn: _Conn,
        head: tuple[int, str, list[tuple[str, str]]],
        timer: asyncio.TimerHandle | None,
    ) -> None:
        self._lease = lease
        self._conn = conn
        self._timer = timer
        self.status: int = head[0]
        self.reason: str = head[1]
        self.headers = Headers(head[2])

    @property
    def closed(self) -> bool:
        """True once the connection went back to the pool or was closed."""
        return self._lease is None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive."""
        while self._lease is not None:
            try:
                chunk = await self._conn.read_chunk()
            except BaseException:
                await self._finish(reuse=False)
                raise
            if not chunk:
                await self._finish(reuse=True)
                return
            yield chunk

    async def read(self) -> bytes:
        """Read the rest of the body."""
        parts = [chunk async for chunk in self.aiter_bytes()]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back: reused if the body was fully read, else closed."""
        if self._lease is not None:
            await self._finish(reuse=False)

    async def _finish(self, reuse: bool) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await _give_back(lease, self._conn, self._timer, reuse)

    async def __aenter__(self) -> AsyncStreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._lease is None else "open"
        return f"<AsyncStreamResponse [{self.status} {self.reason}] {state}>"


class _StreamContext:
    """What ``AsyncHTTPPool.stream`` returns: ``async with`` it, or ``await`` it."""

    __slots__ = ("_args", "_pool", "_resp")

    def __init__(self, pool: AsyncHTTPPool, args: tuple[Any, ...]) -> None:
        self._pool = pool
        self._args = args
        self._resp: AsyncStreamResponse | None = None

    def __await__(self) -> Generator[Any, None, AsyncStreamResponse]:
        return self._pool._open_stream(*self._args).__await__()

    async def __aenter__(self) -> AsyncStreamResponse:
        self._resp = await self._pool._open_stream(*self._args)
        return self._resp

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._resp is not None:
            await self._resp.aclose()


class AsyncHTTPPool:
    """asyncio pool of persistent HTTP/1.1 connections, one keyed sub-pool per origin.

    The same knobs and guarantees as :class:`HTTPPool`: keyed by (scheme, host, port, TLS
    settings), stale idle connections dropped before reuse, an idempotent request retried
    once on a fresh connection when a reused one turns out closed, TLS verified by default.
    Responses are parsed by ``httptools`` (llhttp, C) when it is installed, else by ``h11``;
    ``parser="h11"`` or ``"httptools"`` chooses. A pool belongs to the event loop that
    first used it.

    Example::

        async with AsyncHTTPPool(max_per_host=16) as pool:
            resp = await pool.request("GET", "http://127.0.0.1:8080/")
            async with pool.stream("GET", "http://127.0.0.1:8080/big") as s:
                async for chunk in s.aiter_bytes():
                    ...
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
        self._conn_class: type[_Conn] = (
            _FastConn if parser != "h11" and httptools is not None else _H11Conn
        )
        self.parser = "httptools" if self._conn_class is _FastConn else "h11"
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
        self._origins = OriginTable(self._tls)
        self._pools = async_keyed_pool(self._settings, self._create, _close)
        self.name = name

    async def _create(self, origin: Origin) -> _Conn:
        # an unconnected connection: the borrower connects it (see _connect)
        return self._conn_class(asyncio.get_running_loop(), origin)

    async def _connect(self, conn: _Conn) -> None:
        origin = conn.origin
        ctx: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if origin.tls is not None:
            ctx = self._contexts.get(origin.tls)
            if ctx is None:
                ctx = self._contexts[origin.tls] = origin.tls.context()
            server_hostname = origin.tls.server_hostname or origin.host
        coro = conn.loop.create_connection(
            lambda: conn,
            origin.host,
            origin.port,
            ssl=ctx,
            server_hostname=server_hostname,
        )
        timeout = self._settings.connect_timeout
        try:
            await (asyncio.wait_for(coro, timeout) if timeout is not None else coro)
        except asyncio.TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {origin!r} timed out") from exc

    async def _send(
        self,
        method: str,
        url: str,
        headers: HeadersInput,
        body: Any,
        timeout: float | None,
        tls: TLSConfig | None,
    ) -> tuple[Any, _Conn, tuple[int, str, list[tuple[str, str]]], asyncio.TimerHandle | None]:
        scheme, host, port, host_header, target = parse_url(url)
        origin = self._origins.get(scheme, host, port, tls)
        payload = encode_body(body)
        method = method.upper()
        if timeout is _DEFAULT:
            timeout = self._timeout
        wire = wire_headers(host_header, self._default_headers, header_items(headers), payload)
        prepared = self._conn_class.prepare(method, target, wire, payload)
        pool = self._pools
        retried = False
        stale = 0
        while True:
            lease = await pool.get(origin)
            conn: _Conn = lease.resource
            reused = conn.requests > 0
            if reused and not conn.is_fresh():
                conn.close()
                await lease.discard()
                stale += 1
                if stale > self._settings.max_per_host:
                    await pool.close_idle(origin)
                continue
            timer = None
            try:
                if conn.transport is None:
                    await self._connect(conn)
                conn.busy = True
                if timeout is not None:
                    timer = conn.loop.call_later(timeout, conn.timed_out)
                conn.requests += 1
                await conn.send_request(prepared, method, payload)
                head = await conn.read_head()
            except BaseException as exc:
                if timer is not None:
                    timer.cancel()
                conn.close()
                await lease.discard()
                if (
                    reused
                    and not retried
                    and method in IDEMPOTENT_METHODS
                    and isinstance(exc, _STALE_ERRORS)
                ):
                    retried = True
                    await pool.close_idle(origin)
                    continue
                raise
            return lease, conn, head, timer

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersInput = None,
        body: bytes | str | None = None,
        timeout: float | None = _DEFAULT,
        tls: TLSConfig | None = None,
    ) -> Response:
        """Send a request and read the whole response (see ``HTTPPool.request``).

        ``timeout`` bounds the whole exchange (default: the pool's ``timeout``).
        """
        lease, conn, head, timer = await self._send(method, url, headers, body, timeout, tls)
        parts: list[bytes] = []
        try:
            while True:
                chunk = await conn.read_chunk()
                if not chunk:
                    break
                parts.append(chunk)
        except BaseException:
            await _give_back(lease, conn, timer, reuse=False)
            raise
        await _give_back(lease, conn, timer, reuse=True)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
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
    ) -> _StreamContext:
        """Send a request; ``async with pool.stream(...) as resp`` reads the body on demand.

        ``await pool.stream(...)`` works too (then call ``await resp.aclose()``).
        """
        return _StreamContext(self, (method, url, headers, body, timeout, tls))

    async def _open_stream(
        self,
        method: str,
        url: str,
        headers: HeadersInput,
        body: Any,
        timeout: float | None,
        tls: TLSConfig | None,
    ) -> AsyncStreamResponse:
        lease, conn, head, timer = await self._send(method, url, headers, body, timeout, tls)
        return AsyncStreamResponse(lease, conn, head, timer)

    async def maintain(self) -> None:
        """Close idle connections past ``idle_timeout`` or ``max_lifetime`` now, in every origin."""
        keyed = self._pools
        for key in list(keyed.keys()):
            await keyed.pool_for(key).maintain()
        await keyed.sweep()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._pools.closed

    def stats(self) -> KeyedPoolStats[Origin]:
        """Pool statistics: totals plus ``per_key`` (one :class:`poolkit.PoolStats` per origin)."""
        return self._pools.stats()

    async def aclose(self) -> None:
        """Close every idle connection and refuse new requests."""
        await self._pools.close()

    close = aclose

    async def __aenter__(self) -> AsyncHTTPPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncHTTPPool {self.name!r} origins={len(self._origins)}>"
