"""Database URL parsing: driver choice, connect arguments, pool options, password redaction."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["DatabaseURL", "parse_url", "redact", "scrub_exception", "secret_values"]

#: URL scheme -> (backend, sync driver, async driver); ``None`` = not available in that mode.
SCHEMES: dict[str, tuple[str, str | None, str | None]] = {
    "sqlite": ("sqlite", "sqlite3", None),
    "sqlite3": ("sqlite", "sqlite3", None),
    "duckdb": ("duckdb", "duckdb", None),
    "postgresql": ("postgresql", "psycopg", "psycopg"),
    "postgres": ("postgresql", "psycopg", "psycopg"),
    "postgresql+psycopg": ("postgresql", "psycopg", "psycopg"),
    "postgresql+asyncpg": ("postgresql", None, "asyncpg"),
    "mysql": ("mysql", "pymysql", "aiomysql"),
    "mariadb": ("mysql", "pymysql", "aiomysql"),
    "mysql+pymysql": ("mysql", "pymysql", "aiomysql"),
    "mysql+aiomysql": ("mysql", None, "aiomysql"),
    "mariadb+pymysql": ("mysql", "pymysql", "aiomysql"),
    "mariadb+aiomysql": ("mysql", None, "aiomysql"),
}

#: Pool options accepted in a URL query string, with their converters.
_NONE_WORDS = {"none", "null", "off", ""}


def _opt_float(value: str) -> float | None:
    return None if value.lower() in _NONE_WORDS else float(value)


def _opt_int(value: str) -> int | None:
    return None if value.lower() in _NONE_WORDS else int(value)


POOL_OPTIONS: dict[str, Any] = {
    "min_size": int,
    "max_size": int,
    "acquire_timeout": float,
    "max_waiting": int,
    "idle_timeout": _opt_float,
    "max_lifetime": _opt_float,
    "max_uses": _opt_int,
    "check_after_idle": _opt_float,
    "order": str,
    "leak_timeout": _opt_float,
    "name": str,
    # adapter options (handled by poolkit.db, not the core pool)
    "reset": str,
    "ping_timeout": float,
}

_KINDS: dict[Any, str] = {
    int: "integer",
    float: "number",
    _opt_int: "integer (or 'none')",
    _opt_float: "number (or 'none')",
}

_SECRET_KEYS = ("password", "passwd", "pwd", "secret", "token", "sslpassword")


def secret_values(options: Mapping[str, Any]) -> list[str]:
    """The values of password-like keys (``password``, ``passwd``, ``sslpassword``...)."""
    return [str(v) for k, v in options.items() if k.lower() in _SECRET_KEYS and v]


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL; ``str()`` and ``repr()`` never show the password.

    Example::

        url = parse_url("postgresql://app:s3cret@db:5432/shop?max_size=20&sslmode=require")
        url.backend, url.host, url.database   # ('postgresql', 'db', 'shop')
        url.pool_options                      # {'max_size': 20}
        url.query                             # {'sslmode': 'require'}
        str(url)                              # 'postgresql://app:***@db:5432/shop?sslmode=require'
    """

    scheme: str
    backend: str
    sync_driver: str | None
    async_driver: str | None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    pool_options: Mapping[str, Any] = field(default_factory=dict)

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text; the password shows as ``***`` unless ``hide_password=False``."""
        if self.backend in ("sqlite", "duckdb"):
            text = f"{self.scheme}:///{self.database or ''}"
        else:
            auth = ""
            if self.username is not None:
                auth = quote(self.username, safe="")
                if self.password is not None:
                    pw = "***" if hide_password else quote(self.password, safe="")
                    auth += f":{pw}"
                auth += "@"
            host = self.host or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{self.port}" if self.port is not None else ""
            text = f"{self.scheme}://{auth}{host}{port}/{quote(self.database or '', safe='')}"
        if self.query:
            pairs = []
            for key, value in self.query.items():
                shown = "***" if key.lower() in _SECRET_KEYS and hide_password else value
                pairs.append(f"{quote(key, safe='')}={quote(shown, safe='*')}")
            text += "?" + "&".join(pairs)
        return text

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"DatabaseURL({self.render()!r})"

    def secrets(self) -> tuple[str, ...]:
        """Every secret value this URL carries (to scrub from error messages)."""
        found = [self.password] if self.password else []
        return (*found, *secret_values(self.query))


def parse_url(url: str) -> DatabaseURL:
    """Parse a database URL into a :class:`DatabaseURL`.

    Accepted schemes: ``sqlite``, ``duckdb``, ``postgresql`` (``postgres``,
    ``postgresql+psycopg``, ``postgresql+asyncpg``), ``mysql`` / ``mariadb``
    (``+pymysql``, ``+aiomysql``). File databases take a path after ``///``
    (``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``sqlite:///:memory:``).
    Query options that name a pool option (``max_size``, ``acquire_timeout``, ``reset``...)
    go to :attr:`DatabaseURL.pool_options`; the rest go to the driver.

    Example::

        parse_url("sqlite:///app.db?max_size=4&timeout=10").pool_options   # {'max_size': 4}
    """
    if not isinstance(url, str):
        raise TypeError(f"database URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"database URL {_redact_text(url)!r} has no scheme; "
            "expected for example 'postgresql://user@host/db' or 'sqlite:///app.db'"
        )
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}; "
            f"expected one of {', '.join(sorted(SCHEMES))}"
        )
    backend, sync_driver, async_driver = SCHEMES[scheme]
    path, _, query_text = rest.partition("?")
    query: dict[str, str] = {}
    pool_options: dict[str, Any] = {}
    for key, value in parse_qsl(query_text, keep_blank_values=True):
        if key in POOL_OPTIONS:
            try:
                pool_options[key] = POOL_OPTIONS[key](value)
            except ValueError:
                kind = _KINDS.get(POOL_OPTIONS[key], "value")
                raise ValueError(
                    f"database URL option {key}={value!r} is not a valid {kind}"
                ) from None
        else:
            query[key] = value

    if backend in ("sqlite", "duckdb"):
        # sqlite:///rel.db -> rest = "/rel.db"; sqlite:////abs.db -> "//abs.db"
        if path.startswith("/"):
            path = path[1:]
        return DatabaseURL(
            scheme=scheme,
            backend=backend,
            sync_driver=sync_driver,
            async_driver=async_driver,
            database=unquote(path) or ":memory:",
            query=query,
            pool_options=pool_options,
        )

    parts = urlsplit(f"{scheme}://{path}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"database URL {_redact_text(url)!r} has an invalid port; expected an integer 1-65535"
        ) from None
    return DatabaseURL(
        scheme=scheme,
        backend=backend,
        sync_driver=sync_driver,
        async_driver=async_driver,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname or None,
        port=port,
        database=unquote(parts.path.lstrip("/")) or None,
        query=query,
        pool_options=pool_options,
    )


_URL_PW = re.compile(r"((?:^|://|\s)[^:/?#@\s]*:)([^@/\s]*)(@)")
_KV_PW = re.compile(
    r"(\b(?:password|passwd|pwd|sslpassword)\s*[=:]\s*)('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;,)]+)",
    re.IGNORECASE,
)


def _redact_text(text: str) -> str:
    text = _URL_PW.sub(r"\1***\3", text)
    return _KV_PW.sub(r"\1***", text)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide passwords in ``text``: URL userinfo, ``password=...`` pairs and each given secret.

    Example::

        redact("postgresql://u:pw@h/db")          # 'postgresql://u:***@h/db'
        redact("login failed for pw", ["pw"])     # 'login failed for ***'
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _redact_text(text)


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, bytes):
        for secret in secrets:
            value = value.replace(secret.encode(), b"***")
        return value
    return value


def scrub_exception(exc: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """Remove secrets from ``exc`` and every exception chained to it, in place; returns ``exc``.

    Rewrites ``args``, string attributes and notes of each exception in the
    ``__cause__``/``__context__`` chain, so neither ``str()``, ``repr()`` nor a logged
    traceback shows a password.
    """
    wanted = tuple(s for s in secrets if s)
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        with contextlib.suppress(AttributeError, TypeError):
            current.args = tuple(_scrub_value(a, wanted) for a in current.args)
        attrs = getattr(current, "__dict__", None)
        if attrs:
            for key, value in list(attrs.items()):
                if isinstance(value, (str, bytes)):
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(current, key, _scrub_value(value, wanted))
                elif key == "__notes__" and isinstance(value, list):
                    value[:] = [_scrub_value(v, wanted) for v in value]
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return exc
