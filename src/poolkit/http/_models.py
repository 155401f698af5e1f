"""Origins, TLS settings, URL parsing, headers and responses shared by the HTTP pools."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple, TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "IDEMPOTENT_METHODS",
    "ConnectTimeout",
    "Headers",
    "HeadersInput",
    "Origin",
    "ProtocolError",
    "Response",
    "TLSConfig",
]

#: Methods that may be sent twice: retried once when a reused connection turns out closed.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

HeadersInput: TypeAlias = Mapping[str, str] | Sequence[tuple[str, str]] | None

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class ProtocolError(http.client.HTTPException):
    """The peer broke the HTTP/1.1 protocol (asyncio pool; wraps h11's error).

    Example::

        try:
            await pool.request("GET", url)
        except poolkit.http.ProtocolError as exc:
            log.warning("bad response: %s", exc)
    """


class ConnectTimeout(TimeoutError):
    """Opening the TCP connection or the TLS handshake took longer than ``connect_timeout``.

    Example::

        try:
            pool.request("GET", url)
        except poolkit.http.ConnectTimeout:
            ...  # the server is unreachable; the request was never sent
    """


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings of an origin; part of the pool key, so connections never cross settings.

    Verification is on by default (``ssl.create_default_context()``). The files are read
    when the config is built, and their SHA-256 digests are part of the key, so a rotated
    CA bundle or client certificate at the same path gets new connections when you build a
    new ``TLSConfig``.

    Example::

        tls = TLSConfig(ca_file="ca.pem", client_cert="me.pem", client_key="me.key")
        pool = HTTPPool(tls=tls)
    """

    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_hostname: str | None = None
    ca_digest: str | None = field(default=None, init=False)
    cert_digest: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError(f"client_key ({self.client_key!r}) needs a client_cert")
        object.__setattr__(self, "ca_digest", _file_digest(self.ca_file))
        cert = _file_digest(self.client_cert)
        key = _file_digest(self.client_key)
        object.__setattr__(self, "cert_digest", None if cert is None else f"{cert}:{key}")

    def __repr__(self) -> str:
        return (
            f"TLSConfig(verify={self.verify}, ca_file={self.ca_file!r}, "
            f"client_cert={self.client_cert!r}, server_hostname={self.server_hostname!r})"
        )

    def context(self) -> ssl.SSLContext:
        """Build the ``ssl.SSLContext`` for these settings (callers cache it per config)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


DEFAULT_TLS = TLSConfig()


class Origin(NamedTuple):
    """The pool key: scheme, host, port and (for https) the TLS settings."""

    scheme: str
    host: str
    port: int
    tls: TLSConfig | None

    def __repr__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class _Target(NamedTuple):
    scheme: str
    host: str
    port: int
    host_header: str
    target: str


@lru_cache(maxsize=4096)
def parse_url(url: str) -> _Target:
    """Split an absolute http(s) URL into origin parts, Host header value and request target."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url ({url!r}) must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise ValueError(f"url ({url!r}) has no host")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported; send an Authorization header")
    host_text = f"[{host}]" if ":" in host else host
    host_header = host_text if port == default_port else f"{host_text}:{port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return _Target(scheme, host, port, host_header, target)


class Headers(Mapping[str, str]):
    """Response headers in wire order, looked up case-insensitively.

    ``headers["content-type"]`` joins repeated fields with ", " (``get_all`` keeps them
    apart). Secrets (Authorization, Cookie, Set-Cookie) are hidden in the repr.

    Example::

        resp = pool.request("GET", url)
        resp.headers.get("Content-Type")        # 'text/html'
        resp.headers.get_all("set-cookie")      # ['a=1', 'b=2']
    """

    __slots__ = ("_index", "raw")

    def __init__(self, raw: Sequence[tuple[str, str]]) -> None:
        self.raw = list(raw)
        self._index: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            if key in index:
                index[key] = f"{index[key]}, {value}"
            else:
                index[key] = value
        self._index = index
        return index

    def __getitem__(self, name: str) -> str:
        index = self._index if self._index is not None else self._build()
        return index[name.lower()]

    def __iter__(self) -> Iterator[str]:
        index = self._index if self._index is not None else self._build()
        return iter(index)

    def __len__(self) -> int:
        index = self._index if self._index is not None else self._build()
        return len(index)

    def __contains__(self, name: object) -> bool:
        index = self._index if self._index is not None else self._build()
        return isinstance(name, str) and name.lower() in index

    def get_all(self, name: str) -> list[str]:
        """Every value of the field ``name``, in wire order."""
        key = name.lower()
        return [v for n, v in self.raw if n.lower() == key]

    def __repr__(self) -> str:
        shown = [(n, "[secret]" if n.lower() in _SECRET_HEADERS else v) for n, v in self.raw]
        return f"Headers({shown!r})"


class Response:
    """A complete HTTP response: ``status``, ``headers``, ``body`` (bytes), ``reason``.

    Example::

        resp = pool.request("GET", "http://127.0.0.1:8080/")
        if resp.status == 200:
            print(resp.headers["content-type"], len(resp.body))
    """

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, headers: Headers, body: bytes, reason: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason

    @property
    def text(self) -> str:
        """The body decoded with the charset of Content-Type (UTF-8 by default)."""
        return self.body.decode(_charset(self.headers), errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response [{self.status} {self.reason}] {len(self.body)} bytes>"


def _charset(headers: Headers) -> str:
    ctype = headers.get("content-type", "")
    for part in ctype.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


def encode_body(body: bytes | bytearray | memoryview | str | None) -> bytes | None:
    """Request bodies are sent whole (so an idempotent request can be retried)."""
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body ({type(body).__name__}) must be bytes, str or None")


def header_items(headers: HeadersInput) -> Sequence[tuple[str, str]]:
    """Normalise the ``headers=`` argument to a sequence of pairs (no copy for lists)."""
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return headers


def wire_headers(
    host_header: str,
    defaults: Sequence[tuple[str, str]],
    items: Sequence[tuple[str, str]],
    payload: bytes | None,
) -> list[tuple[str, str]]:
    """Host, the pool's default headers, the caller's (which win) and Content-Length.

    Built fresh for every request: nothing of one request's headers can reach another.
    """
    names = {n.lower() for n, _ in items} if items else ()
    headers: list[tuple[str, str]] = []
    if "host" not in names:
        headers.append(("Host", host_header))
    for name, value in defaults:
        if name.lower() not in names:
            headers.append((name, value))
    headers.extend(items)
    if payload is not None and "content-length" not in names:
        headers.append(("Content-Length", str(len(payload))))
    return headers
