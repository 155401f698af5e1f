"""The DuckDB service example runs: concurrent writers and readers over one pooled file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "duckdb_service.py"


def test_duckdb_service_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    db = tmp_path / "events.duckdb"
    out = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), "--db", str(db), "--requests", "15"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "writes: 60, reads: 60, events stored: 60" in out.stdout
    assert "timeouts=0" in out.stdout
    import duckdb

    conn = duckdb.connect(str(db))  # the service closed the database: it opens again
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (60,)
    finally:
        conn.close()
