"""The ``poolkit`` command end to end, in subprocesses: bench, demo, help and errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

POOLKIT = Path(sys.executable).with_name("poolkit")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    cmd = [str(POOLKIT)] if POOLKIT.exists() else [sys.executable, "-m", "poolkit.cli"]
    env = {**os.environ, "COLUMNS": "120", "PYTHONWARNINGS": "error::ResourceWarning"}
    env.pop("POOLKIT_DEBUG", None)
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_report(out: Path, *, targets: int, concurrency: list[int], sizes: list[int]) -> Any:
    png = (out / "bench.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    report = json.loads((out / "bench.json").read_text())
    assert report["settings"]["concurrency"] == concurrency
    assert report["settings"]["sizes"] == sizes
    assert len(report["targets"]) == targets
    for target in report["targets"]:
        results = target["results"]
        for r in results:
            assert r["requests"] > 0
            assert r["throughput_rps"] == pytest.approx(r["requests"] / r["elapsed_s"])
            assert 0 < r["p50_ms"] <= r["p99_ms"]
            assert r["errors"] == 0
            if r["mode"] == "pooled":
                assert r["pool_size"] in sizes
                # A pool never opens more than min(size, concurrency) connections.
                assert 1 <= r["connections_opened"] <= min(r["pool_size"], r["concurrency"])
            else:
                assert r["pool_size"] is None
                assert r["connections_opened"] >= r["requests"]  # one per request
        for c in concurrency:
            assert sum(1 for r in results if r["concurrency"] == c and r["mode"] == "unpooled") == 1
        recs = {rec["concurrency"]: rec for rec in target["recommendations"]}
        assert sorted(recs) == concurrency
        for c, rec in recs.items():
            pooled = [r for r in results if r["mode"] == "pooled" and r["concurrency"] == c]
            best = max(r["throughput_rps"] for r in pooled)
            assert rec["best_throughput_rps"] == best
            good = [r["pool_size"] for r in pooled if r["throughput_rps"] >= 0.95 * best]
            assert rec["pool_size"] == min(good)
            assert rec["explanation"].startswith(f"With {c} concurrent caller")
    return report


def test_bench_embedded_default(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = run(
        "bench",
        "--quick",
        "--concurrency",
        "1,2",
        "--sizes",
        "1,2",
        "--duration",
        "0.2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    report = check_report(out, targets=2, concurrency=[1, 2], sizes=[1, 2])
    kinds = [t["kind"] for t in report["targets"]]
    assert kinds == ["database", "http"]
    sqlite = report["targets"][0]
    for c in (1, 2):
        base = next(
            r for r in sqlite["results"] if r["mode"] == "unpooled" and r["concurrency"] == c
        )
        for r in sqlite["results"]:
            if r["mode"] == "pooled" and r["concurrency"] == c:
                assert r["throughput_rps"] > base["throughput_rps"]
    assert "recommended" in proc.stdout
    assert "concurrency 2: max_size=" in proc.stdout
    assert f"wrote {out / 'bench.png'}" in proc.stdout


@pytest.mark.postgres
def test_bench_postgresql(tmp_path: Path) -> None:
    out = tmp_path / "pg"
    proc = run(
        "bench",
        PG_URL,
        "--quick",
        "--concurrency",
        "2",
        "--sizes",
        "1,2",
        "--duration",
        "0.2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = check_report(out, targets=1, concurrency=[2], sizes=[1, 2])
    target = report["targets"][0]
    assert target["label"] == PG_URL
    base = next(r for r in target["results"] if r["mode"] == "unpooled")
    pooled = [r for r in target["results"] if r["mode"] == "pooled"]
    assert all(r["throughput_rps"] > base["throughput_rps"] for r in pooled)


def test_demo_runs_the_seed_scenario() -> None:
    proc = run("demo", "--speed", "25")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "5 workers share 3 SQLite connections" in out
    for name in ("db-conn-1", "db-conn-2", "db-conn-3", "http-conn-1", "http-conn-2"):
        assert name in out
    assert "db-conn-4" not in out and "http-conn-3" not in out
    assert "final pool statistics" in out
    assert "the database recorded 5 visits over 3 connections" in out
    assert "the HTTP server saw 4 requests over 2 connections" in out


@pytest.mark.parametrize("command", [(), ("bench",), ("demo",)])
def test_help_has_examples(command: tuple[str, ...]) -> None:
    proc = run(*command, "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    assert f"poolkit {command[0] if command else 'bench'}" in proc.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["bench", "ftp://example.org/x"], "unsupported target scheme 'ftp'"),
        (["bench", "not-a-url"], "unsupported target 'not-a-url'"),
        (
            ["bench", "postgresql://u:s3cret@127.0.0.1:{port}/db"],
            "cannot connect to postgresql://u:***@",
        ),
        (["bench", "http://127.0.0.1:{port}/"], "cannot connect to http://127.0.0.1:"),
        (["bench", "--concurrency", "0"], "argument --concurrency: 0 is out of range"),
        (["bench", "--sizes", "1,x"], "argument --sizes: '1,x' is not a comma-separated list"),
        (["bench", "--duration", "-1"], "argument --duration: -1 must be > 0"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--speed", "0"], "argument --speed: 0 must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    port = str(closed_port())
    proc = run(*(a.replace("{port}", port) for a in args), timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("poolkit: error: ")
    assert expected in lines[0]
    assert "s3cret" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_out_dir_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run(
        "bench",
        "sqlite:///:memory:",
        "--quick",
        "--concurrency",
        "1",
        "--sizes",
        "1",
        "--duration",
        "0.05",
        "--out",
        str(blocker / "sub"),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("poolkit: error: cannot create output directory")
