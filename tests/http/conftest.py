"""Fixtures for the HTTP pool tests: TLS certificates (openssl CLI) and a TLS-enabled nginx."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from tls_nginx import Certs, TLSNginx, make_certs

from servers import PrivateNginx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates made once per session with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_nginx(nginx_binary: None, certs: Certs) -> Iterator[TLSNginx]:
    """A private nginx answering plain HTTP on ``.port`` and TLS on ``.tls_port``."""
    with TLSNginx(certs) as web:
        yield web


@pytest.fixture
def short_keepalive_nginx(nginx_binary: None) -> Iterator[PrivateNginx]:
    """A private nginx that closes idle keep-alive connections after 1 s."""
    with PrivateNginx(keepalive_timeout=1) as web:
        yield web
