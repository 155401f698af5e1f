"""``poolkit bench``: measure a target with and without pooling and recommend a pool size."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from poolkit.cli._errors import CLIError
from poolkit.cli._targets import Target

__all__ = [
    "BenchConfig",
    "Recommendation",
    "RunResult",
    "measure",
    "recommend",
    "sweep",
    "write_chart",
    "write_json",
]

#: A pool size is "as good" as the best one when its throughput is within this fraction.
WITHIN = 0.05


@dataclass(frozen=True)
class BenchConfig:
    """The sweep: concurrency levels x pool sizes, each measured for ``duration_s``.

    Example::

        BenchConfig(concurrency=(1, 4, 16), sizes=(1, 2, 4, 8, 16), duration_s=0.5)
    """

    concurrency: tuple[int, ...] = (1, 4, 16)
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    duration_s: float = 0.5
    warmup_s: float = 0.1

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 or c > 1024 for c in self.concurrency):
            raise ValueError(f"concurrency ({self.concurrency}) must be levels between 1 and 1024")
        if not self.sizes or any(s < 1 or s > 1024 for s in self.sizes):
            raise ValueError(f"sizes ({self.sizes}) must be pool sizes between 1 and 1024")
        if not 0 < self.duration_s <= 3600:
            raise ValueError(f"duration_s ({self.duration_s}) must be > 0 and <= 3600")
        if not 0 <= self.warmup_s <= 600:
            raise ValueError(f"warmup_s ({self.warmup_s}) must be >= 0 and <= 600")

    def sizes_for(self, concurrency: int) -> tuple[int, ...]:
        """The pool sizes worth measuring at ``concurrency``.

        A pool never opens more connections than there are concurrent callers, so sizes above
        the concurrency behave alike: only the smallest of them is measured.
        """
        below = tuple(s for s in self.sizes if s <= concurrency)
        above = tuple(s for s in self.sizes if s > concurrency)
        if concurrency not in below and above:
            below += above[:1]
        return below

    @property
    def runs(self) -> int:
        """How many measurements one target takes (one unpooled run per concurrency)."""
        return sum(1 + len(self.sizes_for(c)) for c in self.concurrency)


@dataclass(frozen=True)
class RunResult:
    """One measurement: ``mode`` is ``"pooled"`` (``Pool``) or ``"unpooled"`` (``NullPool``).

    Latencies are per request, from asking for a connection to the end of the request.

    Example::

        r = measure(target, pooled=True, concurrency=4, size=2, duration_s=0.5)
        print(f"{r.throughput_rps:.0f} req/s, p99 {r.p99_ms} ms, {r.connections_opened} conns")
    """

    mode: str
    concurrency: int
    pool_size: int | None
    requests: int
    errors: int
    elapsed_s: float
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    connections_opened: int
    first_error: str | None = None


@dataclass(frozen=True)
class Recommendation:
    """The smallest pool size within 5 % of the best pooled throughput at one concurrency.

    Example::

        rec = recommend(sweep(target, BenchConfig()), concurrency=16)
        print(rec.pool_size, rec.explanation)
    """

    concurrency: int
    pool_size: int
    throughput_rps: float
    p99_ms: float | None
    best_pool_size: int
    best_throughput_rps: float
    unpooled_throughput_rps: float | None
    unpooled_p99_ms: float | None
    explanation: str = field(default="")


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def measure(
    target: Target,
    *,
    pooled: bool,
    concurrency: int,
    size: int,
    duration_s: float,
    warmup_s: float = 0.1,
    on_progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Run ``concurrency`` threads against ``target`` for ``warmup_s + duration_s`` seconds.

    Pooled runs borrow from a ``poolkit.Pool(max_size=size)``; unpooled runs from a
    ``poolkit.NullPool``, which opens and closes a connection per request. Only requests
    started after the warm-up are counted.
    """
    name = f"bench-{'pooled' if pooled else 'unpooled'}-c{concurrency}-s{size}"
    pool, close_pool = target.open_pool(
        pooled=pooled, max_size=size if pooled else concurrency, name=name
    )
    if pooled:
        # Steady state: open the connections the run will use before the clock starts.
        warm: list[Any] = []
        try:
            try:
                for _ in range(min(size, concurrency)):
                    warm.append(pool.acquire())
            finally:
                for lease in warm:
                    lease.release()
        except Exception as exc:
            close_pool()
            raise CLIError(
                f"cannot open {min(size, concurrency)} connections to {target.label}: "
                f"{target.describe_error(exc)}"
            ) from None
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[BaseException] = []
    window = [0.0, 0.0]
    barrier = threading.Barrier(concurrency + 1)
    clock = time.perf_counter

    def worker(i: int) -> None:
        lat = latencies[i]
        acquire = pool.acquire
        request = target.request
        try:
            barrier.wait(30.0)
        except threading.BrokenBarrierError:
            return
        measure_at, end_at = window
        while True:
            t0 = clock()
            if t0 >= end_at:
                return
            try:
                with acquire() as conn:
                    request(conn)
            except Exception as exc:
                if t0 >= measure_at:
                    errors[i] += 1
                if not first_error:
                    first_error.append(exc)
                time.sleep(0.005)
                continue
            if t0 >= measure_at:
                lat.append(clock() - t0)

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"poolkit-bench-{i}", daemon=True)
        for i in range(concurrency)
    ]
    try:
        for t in threads:
            t.start()
        start = clock()
        window[0] = start + warmup_s
        window[1] = start + warmup_s + duration_s
        barrier.wait(30.0)
        total = warmup_s + duration_s
        for t in threads:
            while t.is_alive():
                t.join(0.1)
                if on_progress is not None:
                    on_progress(min(1.0, (clock() - start) / total))
        stats = pool.stats()
    finally:
        barrier.abort()
        for t in threads:
            t.join(35.0)
        close_pool()
    merged = sorted(x for lat in latencies for x in lat)
    count = len(merged)
    err = first_error[0] if first_error else None
    return RunResult(
        mode="pooled" if pooled else "unpooled",
        concurrency=concurrency,
        pool_size=size if pooled else None,
        requests=count,
        errors=sum(errors),
        elapsed_s=round(duration_s, 6),
        throughput_rps=count / duration_s,
        p50_ms=_ms(_percentile(merged, 0.50)),
        p99_ms=_ms(_percentile(merged, 0.99)),
        connections_opened=int(stats.created_total),
        first_error=None if err is None else f"{type(err).__name__}: {target.describe_error(err)}",
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def sweep(
    target: Target,
    config: BenchConfig,
    on_progress: Callable[[float, str], None] | None = None,
) -> list[RunResult]:
    """Measure every (concurrency, unpooled | pool size) combination of ``config``.

    ``on_progress(done_runs, label)`` reports progress in runs (fractional while one runs).
    Raises ``CLIError`` when every request of a run failed (the target went away).
    """
    results: list[RunResult] = []
    plan: list[tuple[int, int | None]] = []
    for c in config.concurrency:
        plan.append((c, None))
        plan.extend((c, s) for s in config.sizes_for(c))
    for index, (c, s) in enumerate(plan):
        label = f"concurrency {c}, " + ("no pool" if s is None else f"pool size {s}")

        def progress(frac: float, index: int = index, label: str = label) -> None:
            if on_progress is not None:
                on_progress(index + frac, label)

        progress(0.0)
        result = measure(
            target,
            pooled=s is not None,
            concurrency=c,
            size=s if s is not None else c,
            duration_s=config.duration_s,
            warmup_s=config.warmup_s,
            on_progress=progress,
        )
        if result.requests == 0:
            raise CLIError(
                f"every request to {target.label} failed ({label}): "
                f"{result.first_error or 'no request finished in time'}"
            )
        results.append(result)
        progress(1.0)
    return results


def recommend(results: Sequence[RunResult], concurrency: int) -> Recommendation | None:
    """The smallest pool size whose throughput is within 5 % of the best, at ``concurrency``."""
    pooled = [
        r for r in results if r.mode == "pooled" and r.concurrency == concurrency and r.requests
    ]
    if not pooled:
        return None
    best = max(pooled, key=lambda r: r.throughput_rps)
    good = [r for r in pooled if r.throughput_rps >= (1 - WITHIN) * best.throughput_rps]
    pick = min(good, key=lambda r: r.pool_size or 0)
    unpooled = next(
        (r for r in results if r.mode == "unpooled" and r.concurrency == concurrency), None
    )
    rec = Recommendation(
        concurrency=concurrency,
        pool_size=pick.pool_size or 0,
        throughput_rps=pick.throughput_rps,
        p99_ms=pick.p99_ms,
        best_pool_size=best.pool_size or 0,
        best_throughput_rps=best.throughput_rps,
        unpooled_throughput_rps=unpooled.throughput_rps if unpooled else None,
        unpooled_p99_ms=unpooled.p99_ms if unpooled else None,
    )
    smallest = min(r.pool_size or 0 for r in pooled)
    return replace(rec, explanation=_explain(rec, smallest))


def _explain(rec: Recommendation, smallest_size: int) -> str:
    p99 = f"{fmt_ms(rec.p99_ms)} ms" if rec.p99_ms is not None else "n/a"
    callers = f"{rec.concurrency} concurrent caller{'s' if rec.concurrency != 1 else ''}"
    text = (
        f"With {callers}, a pool of {rec.pool_size} gives {_rate(rec.throughput_rps)} (p99 {p99})"
    )
    if rec.best_pool_size != rec.pool_size:
        gain = (rec.best_throughput_rps / rec.throughput_rps - 1) * 100 if rec.throughput_rps else 0
        text += (
            f", within {gain:.0f}% of the best (size {rec.best_pool_size}), so more connections "
            "would only load the server"
        )
    elif rec.pool_size == smallest_size:
        text += ", the best of the sizes tried"
    else:
        text += ", and every smaller pool falls more than 5% short"
    if rec.unpooled_throughput_rps:
        ratio = rec.throughput_rps / rec.unpooled_throughput_rps
        if ratio >= 1:
            text += f": {ratio:.1f}x the throughput without pooling"
        else:
            text += f": {1 / ratio:.1f}x less than without pooling (connections here are cheap)"
    return text + "."


def fmt_ms(value: float | None) -> str:
    """Milliseconds with enough digits to tell sub-millisecond latencies apart."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _rate(rps: float) -> str:
    return f"{rps:,.0f} req/s"


# -- report files ----------------------------------------------------------------------------


def build_report(
    config: BenchConfig, targets: Sequence[tuple[Target, Sequence[RunResult]]]
) -> dict[str, Any]:
    """The JSON-ready report of a whole bench."""
    try:
        version = importlib.metadata.version("poolkit")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    out_targets = []
    for target, results in targets:
        recs = [recommend(results, c) for c in config.concurrency]
        out_targets.append(
            {
                "label": target.label,
                "kind": target.kind,
                "description": target.description,
                "results": [asdict(r) for r in results],
                "recommendations": [asdict(r) for r in recs if r is not None],
            }
        )
    return {
        "tool": "poolkit bench",
        "poolkit_version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "settings": {
            "concurrency": list(config.concurrency),
            "sizes": list(config.sizes),
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
        },
        "targets": out_targets,
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON."""
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_chart(path: Path, report: dict[str, Any]) -> None:
    """Draw throughput and p99 against pool size, one line per concurrency level, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    targets = report["targets"]
    sizes = report["settings"]["sizes"]
    fig, axes = plt.subplots(
        len(targets), 2, figsize=(11, 3.9 * len(targets)), squeeze=False, layout="constrained"
    )
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    for row, t in enumerate(targets):
        ax_t, ax_p = axes[row]
        results = t["results"]
        recs = {r["concurrency"]: r for r in t["recommendations"]}
        for i, c in enumerate(report["settings"]["concurrency"]):
            color = colors[i % len(colors)]
            pooled = sorted(
                (r for r in results if r["mode"] == "pooled" and r["concurrency"] == c),
                key=lambda r: r["pool_size"],
            )
            xs = [r["pool_size"] for r in pooled]
            ax_t.plot(xs, [r["throughput_rps"] for r in pooled], "o-", color=color, label=f"{c}")
            ax_p.plot(xs, [r["p99_ms"] for r in pooled], "o-", color=color, label=f"{c}")
            base = next(
                (r for r in results if r["mode"] == "unpooled" and r["concurrency"] == c), None
            )
            if base is not None:
                ax_t.axhline(base["throughput_rps"], color=color, linestyle="--", linewidth=1)
                if base["p99_ms"] is not None:
                    ax_p.axhline(base["p99_ms"], color=color, linestyle="--", linewidth=1)
            rec = recs.get(c)
            if rec is not None:
                ax_t.plot(
                    [rec["pool_size"]],
                    [rec["throughput_rps"]],
                    "*",
                    color=color,
                    markersize=16,
                    markeredgecolor="black",
                )
        ax_t.yaxis.set_major_formatter(FuncFormatter(_short_number))
        for ax, ylabel in ((ax_t, "throughput (requests/s)"), (ax_p, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(s) for s in sizes])
            ax.minorticks_off()
            ax.set_xlabel("pool size (max_size)")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        ax_t.set_title(f"{t['label']}: throughput (higher is better)", fontsize=10)
        ax_p.set_title(f"{t['label']}: p99 latency (lower is better)", fontsize=10)
        handles, _ = ax_t.get_legend_handles_labels()
        handles += [
            Line2D([], [], color="gray", linestyle="--", label="no pool (NullPool)"),
            Line2D(
                [],
                [],
                color="gray",
                marker="*",
                linestyle="",
                markersize=12,
                markeredgecolor="black",
                label="recommended size",
            ),
        ]
        ax_t.legend(handles=handles, title="concurrency", fontsize=8, title_fontsize=8, loc="best")
    fig.suptitle("poolkit bench: poolkit.Pool (solid) vs no pooling (dashed)", fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short_number(value: float, _pos: object = None) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def default_out_dir() -> Path:
    """``./poolkit-bench-<timestamp>/``."""
    return Path.cwd() / f"poolkit-bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
