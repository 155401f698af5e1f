"""Benchmark what metrics cost a pool's hot path, and poolkit vs no pooling on real targets.

Part 1, the cost of observing: one thread doing acquire/release of an idle resource on a
``Pool(max_size=4)``, with no exporter, with the Prometheus collector registered (timings
off: no listener is attached, so the ratio should be ~1.00), with Prometheus timings on
(three histograms fed by events) and with the OpenTelemetry instruments (timings on). The
rate is per CPU second of the borrowing thread, the rounds are interleaved and the best of
each is kept, to damp the noise of a shared machine.

Part 2, what ``poolkit bench`` measures, in the same run: throughput of ``poolkit.Pool``
against ``poolkit.NullPool`` (a new connection per request) on SQLite, the local keep-alive
HTTP server and the machine's PostgreSQL (skipped if unreachable), 8 threads, pool size 8.

Usage::

    .venv/bin/python benchmarks/bench_metrics.py            # ~25 s
    .venv/bin/python benchmarks/bench_metrics.py --quick    # ~8 s
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from poolkit import Pool
from poolkit.cli._errors import CLIError
from poolkit.cli._targets import DatabaseTarget, Target, embedded_targets
from poolkit.cli.bench import measure
from poolkit.metrics.otel import PoolInstruments
from poolkit.metrics.prometheus import PoolCollector

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def borrow_rate(setup: Callable[[Pool[object]], Callable[[], None]], n: int) -> float:
    """Acquire/release per CPU second on a warm pool after ``setup(pool)`` (returns a teardown)."""
    pool: Pool[object] = Pool(object, max_size=4, name="bench")
    teardown = setup(pool)
    try:
        acquire = pool.acquire
        for _ in range(1000):
            with acquire():
                pass
        t0 = time.thread_time()  # CPU time of this thread: steadier than wall time on a busy box
        for _ in range(n):
            with acquire():
                pass
        return n / (time.thread_time() - t0)
    finally:
        teardown()
        pool.close()


def nothing(pool: Pool[object]) -> Callable[[], None]:
    return lambda: None


def prometheus(timings: bool) -> Callable[[Pool[object]], Callable[[], None]]:
    def setup(pool: Pool[object]) -> Callable[[], None]:
        collector = PoolCollector(CollectorRegistry())
        collector.register(pool, timings=timings)
        return lambda: collector.unregister(pool)

    return setup


def otel(pool: Pool[object]) -> Callable[[], None]:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instruments = PoolInstruments(provider)
    instruments.register(pool, timings=True)

    def teardown() -> None:
        instruments.unregister(pool)
        provider.shutdown()

    return teardown


def part1(n: int, rounds: int) -> None:
    cases: dict[str, Callable[[Pool[object]], Callable[[], None]]] = {
        "no exporter": nothing,
        "prometheus, timings off": prometheus(False),
        "prometheus, timings on": prometheus(True),
        "opentelemetry, timings on": otel,
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for label, setup in cases.items():
            best[label] = max(best[label], borrow_rate(setup, n))
    base = best["no exporter"]
    print(f"Part 1: acquire+release of an idle resource, 1 thread, best of {rounds} x {n:,}")
    print(f"  {'case':28} {'borrows/CPU s':>14} {'vs none':>8}")
    for label, rate in best.items():
        print(f"  {label:28} {rate:14,.0f} {rate / base:8.2f}")


def part2(duration: float) -> None:
    targets: list[Target] = embedded_targets(0.002, 0.005, 4)
    try:
        pg = DatabaseTarget(PG_URL)
        pg.probe()
        targets.append(pg)
    except CLIError as exc:
        print(f"  (PostgreSQL skipped: {exc})")
    print(f"\nPart 2: poolkit.Pool vs NullPool, 8 threads, pool size 8, {duration:g} s each")
    print(f"  {'target':44} {'NullPool r/s':>12} {'Pool r/s':>10} {'ratio':>7} {'p99 ms':>15}")
    try:
        for target in targets:
            null = measure(target, pooled=False, concurrency=8, size=8, duration_s=duration)
            pool = measure(target, pooled=True, concurrency=8, size=8, duration_s=duration)
            p99 = f"{null.p99_ms or 0:.2f} -> {pool.p99_ms or 0:.2f}"
            print(
                f"  {target.label:44} {null.throughput_rps:12,.0f} {pool.throughput_rps:10,.0f} "
                f"{pool.throughput_rps / null.throughput_rps:6.1f}x {p99:>15}"
            )
    finally:
        for target in targets:
            target.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    args = parser.parse_args()
    if args.quick:
        part1(n=20_000, rounds=3)
        part2(duration=0.5)
    else:
        part1(n=50_000, rounds=5)
        part2(duration=2.0)


if __name__ == "__main__":
    main()
