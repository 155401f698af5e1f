"""The httptools (llhttp) response parser and a validating request encoder, shared by both pools."""

from __future__ import annotations

import http.client
import importlib
import re
from collections import deque
from typing import Any

from poolkit.http._models import ProtocolError

__all__ = ["ResponseState", "encode_request", "httptools"]


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - depends on the installation
        return None


#: The fast parser (llhttp, in C) when installed, else None (the pools fall back).
httptools: Any = _optional("httptools")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(r"[\x00\r\n]")


def encode_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
) -> bytes:
    """Serialise a request, refusing every byte that could split or smuggle a request.

    Method and header names must be RFC 9110 tokens; values and the target must not hold
    CR, LF or NUL (the target no spaces or controls either). Raises ``ValueError``.
    """
    if _TOKEN.fullmatch(method) is None:
        raise ValueError(f"invalid request: method {method!r} is not an HTTP token")
    if _BAD_TARGET.search(target) is not None:
        raise ValueError(f"invalid request: target {target!r} has spaces or control bytes")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"invalid request: header name {name!r} is not an HTTP token")
        text = value.strip(" \t")
        if _BAD_VALUE.search(text) is not None:
            raise ValueError(f"invalid request: header {name!r} has CR, LF or NUL")
        lines.append(f"{name}: {text}\r\n")
    lines.append("\r\n")
    try:
        data = "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid request: header text is not latin-1: {exc}") from exc
    return data + body if body else data


class ResponseState:
    """One response being parsed by llhttp: head fields, queued body chunks, completion.

    ``feed(data)`` runs the parser (its callbacks fill the fields); ``eof()`` is called
    when the peer closed the connection.
    """

    __slots__ = (
        "buffered",
        "chunks",
        "framed",
        "got_bytes",
        "head_done",
        "headers",
        "is_head",
        "keep_alive",
        "msg_done",
        "parser",
        "reason",
        "status",
    )

    def __init__(self, is_head: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.is_head = is_head
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.head_done = False
        self.msg_done = False
        self.keep_alive = False
        self.got_bytes = False
        self.framed = True

    # llhttp callbacks
    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim response: the real one follows
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.is_head or status in (204, 304):
            self.msg_done = True  # no body, whatever Content-Length says
        else:
            names = {n.lower() for n, _ in self.headers}
            self.framed = "content-length" in names or "transfer-encoding" in names

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.msg_done = True

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`ProtocolError` on a malformed response."""
        self.got_bytes = True
        if self.msg_done:  # bytes after the end of the response: never reuse
            self.keep_alive = False
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            raise ProtocolError(f"invalid HTTP response: {exc}") from exc

    def eof(self) -> None:
        """The peer closed the connection: complete a close-delimited body or raise."""
        self.keep_alive = False
        if self.msg_done:
            return
        if not self.head_done:
            if not self.got_bytes:
                raise http.client.RemoteDisconnected(
                    "Remote end closed connection without response"
                )
            raise ProtocolError("peer closed connection in the middle of the response head")
        if not self.framed:
            self.msg_done = True  # the body was delimited by the end of the connection
            return
        raise http.client.IncompleteRead(b"")

    def pop(self) -> bytes:
        data = self.chunks.popleft()
        self.buffered -= len(data)
        return data
