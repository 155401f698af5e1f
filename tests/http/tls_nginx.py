"""TLS test material made with the openssl CLI and an nginx with a TLS listener.

Used by ``tests/http`` and ``benchmarks/bench_http.py``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from servers import PrivateNginx, free_port


@dataclass(frozen=True)
class Certs:
    """A test CA, a server certificate it signed (localhost, 127.0.0.1) and a second CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=poolkit test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_certs(d: Path) -> Certs:
    """A CA, a server certificate it signed (localhost, 127.0.0.1) and an unrelated CA."""
    _make_ca(d, "ca")
    _make_ca(d, "other")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=d,
    )  # fmt: skip
    (d / "client.cnf").write_text("extendedKeyUsage=clientAuth\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=poolkit client",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client.cnf",
        cwd=d,
    )  # fmt: skip
    return Certs(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "other.pem",
        d / "client.pem",
        d / "client.key",
    )


class TLSNginx(PrivateNginx):
    """:class:`PrivateNginx` with a second, TLS, listener on ``tls_port`` (same locations)."""

    def __init__(self, certs: Certs, **kwargs: object) -> None:
        self.certs = certs
        self.tls_port = free_port()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _write_config(self) -> None:
        super()._write_config()
        text = self.conf_path.read_text()
        plain = re.search(rf"listen {re.escape(self.host)}:{self.port}\b[^;]*;", text)
        if plain is None:
            raise RuntimeError(f"no listen directive for port {self.port} in:\n{text}")
        tls = (
            f"\n        listen {self.host}:{self.tls_port} ssl;\n"
            f"        ssl_certificate {self.certs.server_cert};\n"
            f"        ssl_certificate_key {self.certs.server_key};\n"
            f"        ssl_client_certificate {self.certs.ca};\n"
            f"        ssl_verify_client optional;\n"
            f"        add_header X-Client-Verify $ssl_client_verify always;"
        )
        self.conf_path.write_text(text[: plain.end()] + tls + text[plain.end() :])

    def tls_url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        """``https://HOST:TLS_PORT`` + path."""
        return f"https://{host}:{self.tls_port}{path}"
