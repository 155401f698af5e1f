"""The bench's pure parts (recommendation, sweep plan) and its embedded HTTP server."""

from __future__ import annotations

import http.client
import json

import pytest

from poolkit.cli._errors import CLIError
from poolkit.cli._server import EmbeddedHTTPServer
from poolkit.cli._targets import EmbeddedSQLiteTarget, HTTPTarget, parse_target, redact_url
from poolkit.cli.bench import BenchConfig, RunResult, measure, recommend


def result(mode: str, c: int, size: int | None, rps: float, p99: float = 1.0) -> RunResult:
    return RunResult(
        mode=mode,
        concurrency=c,
        pool_size=size,
        requests=int(rps),
        errors=0,
        elapsed_s=1.0,
        throughput_rps=rps,
        p50_ms=p99 / 2,
        p99_ms=p99,
        connections_opened=size or int(rps),
    )


def test_recommends_smallest_size_within_five_percent() -> None:
    results = [
        result("unpooled", 16, None, 500),
        result("pooled", 16, 1, 400),
        result("pooled", 16, 2, 800),
        result("pooled", 16, 4, 1800, p99=7.5),  # 1800 >= 0.95 * 1880
        result("pooled", 16, 8, 1880),
        result("pooled", 16, 16, 1850),
    ]
    rec = recommend(results, 16)
    assert rec is not None
    assert (rec.pool_size, rec.best_pool_size, rec.p99_ms) == (4, 8, 7.5)
    assert rec.unpooled_throughput_rps == 500
    assert rec.explanation == (
        "With 16 concurrent callers, a pool of 4 gives 1,800 req/s (p99 7.50 ms), within 4% of "
        "the best (size 8), so more connections would only load the server: 3.6x the "
        "throughput without pooling."
    )


def test_recommendation_when_only_the_best_will_do() -> None:
    results = [
        result("unpooled", 4, None, 100),
        result("pooled", 4, 1, 200),
        result("pooled", 4, 2, 300),
        result("pooled", 4, 4, 400, p99=0.5),
    ]
    rec = recommend(results, 4)
    assert rec is not None and rec.pool_size == 4
    assert "every smaller pool falls more than 5% short" in rec.explanation
    assert "p99 0.500 ms" in rec.explanation
    assert recommend(results, 8) is None


def test_sizes_above_the_concurrency_are_measured_once() -> None:
    config = BenchConfig(concurrency=(1, 4, 5, 16), sizes=(1, 2, 4, 8, 16))
    assert config.sizes_for(1) == (1,)
    assert config.sizes_for(4) == (1, 2, 4)
    assert config.sizes_for(5) == (1, 2, 4, 8)
    assert config.sizes_for(16) == (1, 2, 4, 8, 16)
    assert config.runs == 4 + 1 + 3 + 4 + 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": (0,)}, r"concurrency \(\(0,\)\) must be levels between 1 and 1024"),
        ({"sizes": ()}, r"sizes \(\(\)\) must be pool sizes"),
        ({"duration_s": 0}, r"duration_s \(0\) must be > 0"),
    ],
)
def test_bad_config_names_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)


def test_measure_pooled_and_unpooled_in_process() -> None:
    target = EmbeddedSQLiteTarget()
    try:
        target.probe()
        pooled = measure(target, pooled=True, concurrency=2, size=1, duration_s=0.1, warmup_s=0)
        unpooled = measure(target, pooled=False, concurrency=2, size=2, duration_s=0.1, warmup_s=0)
    finally:
        target.cleanup()
    assert pooled.connections_opened == 1
    assert pooled.requests > 0 and pooled.errors == 0
    assert unpooled.connections_opened >= unpooled.requests > 0
    assert pooled.throughput_rps > unpooled.throughput_rps


def test_embedded_server_keeps_connections_alive() -> None:
    with EmbeddedHTTPServer(work_s=0.0, setup_s=0.0, capacity=2) as server:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        try:
            bodies = []
            for _ in range(3):
                conn.request("GET", "/items?ms=1")
                resp = conn.getresponse()
                assert resp.status == 200
                bodies.append(json.loads(resp.read()))
            conn.request("GET", "/?ms=abc")
            bad = conn.getresponse()
            assert bad.status == 400
            assert json.loads(bad.read()) == {"error": "ms ('abc') must be a number"}
        finally:
            conn.close()
        assert [b["request"] for b in bodies] == [1, 2, 3]
        assert bodies[0]["work_ms"] == 1.0
        assert server.connections == 1
        assert server.requests == 3


def test_embedded_server_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match=r"capacity \(0\) must be between 1 and 10000"):
        EmbeddedHTTPServer(capacity=0)
    with pytest.raises(ValueError, match=r"work_s \(-1\) must be >= 0"):
        EmbeddedHTTPServer(work_s=-1)


def test_targets_from_urls_hide_passwords() -> None:
    assert redact_url("http://u:pw@h:1/p") == "http://u:***@h:1/p"
    target = parse_target("postgresql://app:s3cret@db.internal:5432/shop")
    assert "s3cret" not in target.label and "***" in target.label
    http_target = parse_target("https://example.internal/ping?x=1")
    assert isinstance(http_target, HTTPTarget)
    assert (http_target.host, http_target.port, http_target.path) == (
        "example.internal",
        None,
        "/ping?x=1",
    )
    with pytest.raises(CLIError, match="unsupported target scheme 'redis'"):
        parse_target("redis://127.0.0.1:6379")
    with pytest.raises(CLIError, match="asyncio-only"):
        parse_target("postgresql+asyncpg://postgres@127.0.0.1/test")


@pytest.mark.parametrize(
    "text", ["app:s3cret@db.internal/shop", "postgresql:/app:s3cret@db.internal/shop"]
)
def test_a_url_without_scheme_separator_never_shows_its_password(text: str) -> None:
    with pytest.raises(CLIError) as info:
        parse_target(text)
    assert "s3cret" not in str(info.value)
    assert ":***@db.internal" in str(info.value)
