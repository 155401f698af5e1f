"""The local HTTP/1.1 keep-alive server that ``poolkit bench`` and ``poolkit demo`` talk to."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["EmbeddedHTTPServer"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise
    server_version = "poolkit-embedded/1"
    timeout = 30.0  # an idle keep-alive connection is dropped after this
    disable_nagle_algorithm = True  # small replies go out at once, not after a delayed ACK
    wbufsize = 64 * 1024  # the base class flushes after each request
    server: _Server

    def setup(self) -> None:
        super().setup()
        # What a new connection costs a real service: TCP + TLS handshake, auth, session setup.
        if self.server.setup_s > 0:
            time.sleep(self.server.setup_s)
        with self.server.counts_lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        work_s = self.server.work_s
        if "ms" in query:
            try:
                work_s = max(0.0, min(float(query["ms"][0]) / 1000.0, 10.0))
            except ValueError:
                self._reply(400, {"error": f"ms ({query['ms'][0]!r}) must be a number"})
                return
        if work_s > 0:
            # The backend's own work (a cache lookup, a small query), on one of its
            # `capacity` workers: like a real service, it serves only so many at once.
            with self.server.workers:
                time.sleep(work_s)
        with self.server.counts_lock:
            self.server.requests += 1
            n = self.server.requests
        self._reply(200, {"path": parts.path, "request": n, "work_ms": round(work_s * 1000, 3)})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)  # buffered: headers and body leave in one write per reply

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, work_s: float, setup_s: float, capacity: int) -> None:
        self.work_s = work_s
        self.setup_s = setup_s
        self.workers = threading.BoundedSemaphore(capacity)
        self.counts_lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-request are normal here; say nothing."""


class EmbeddedHTTPServer:
    """A threaded HTTP/1.1 keep-alive server on 127.0.0.1, run in a background thread.

    Each new connection costs ``setup_s`` (a stand-in for a TLS handshake and session set-up)
    and each request ``work_s`` (the backend's work), unless the request asks for
    ``?ms=N``; at most ``capacity`` requests work at once (the backend's workers or cores),
    the others queue. It answers ``GET`` on any path with a small JSON body.

    Example::

        with EmbeddedHTTPServer(work_s=0.0005, setup_s=0.003) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port)
            conn.request("GET", "/")
            print(conn.getresponse().read())
            conn.close()
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        work_s: float = 0.0005,
        setup_s: float = 0.003,
        capacity: int = 4,
    ) -> None:
        if work_s < 0:
            raise ValueError(f"work_s ({work_s!r}) must be >= 0")
        if setup_s < 0:
            raise ValueError(f"setup_s ({setup_s!r}) must be >= 0")
        if not 1 <= capacity <= 10_000:
            raise ValueError(f"capacity ({capacity!r}) must be between 1 and 10000")
        self.capacity = capacity
        self._server = _Server(host, port, work_s, setup_s, capacity)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="poolkit-http-server",
            daemon=True,
        )
        self._started = False

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        return f"http://{self.host}:{self.port}/"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._server.connections

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        return self._server.requests

    def start(self) -> EmbeddedHTTPServer:
        """Start serving in a background thread; returns ``self``."""
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._started:
            self._server.shutdown()
            self._thread.join(5.0)
            self._started = False
        self._server.server_close()

    def __enter__(self) -> EmbeddedHTTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
