"""The ``poolkit bench`` command: build targets, run the sweep with progress bars, report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from poolkit.cli._errors import CLIError
from poolkit.cli._targets import Target, embedded_targets, parse_target
from poolkit.cli.bench import (
    BenchConfig,
    Recommendation,
    RunResult,
    build_report,
    default_out_dir,
    fmt_ms,
    recommend,
    sweep,
    write_chart,
    write_json,
)

__all__ = ["run_bench"]

QUICK = BenchConfig(concurrency=(1, 4), sizes=(1, 2, 4), duration_s=0.25, warmup_s=0.05)
FULL = BenchConfig()


def _config(args: argparse.Namespace) -> BenchConfig:
    base = QUICK if args.quick else FULL
    duration = args.duration if args.duration is not None else base.duration_s
    return BenchConfig(
        concurrency=args.concurrency or base.concurrency,
        sizes=args.sizes or base.sizes,
        duration_s=duration,
        warmup_s=min(base.warmup_s, duration),
    )


def _out_dir(path: Path | None) -> Path:
    out = path if path is not None else default_out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create output directory {str(out)!r}: {exc.strerror}") from None
    return out


def run_bench(args: argparse.Namespace) -> int:
    """Run ``poolkit bench`` as parsed by the command's parser; returns the exit code."""
    config = _config(args)
    import matplotlib  # noqa: F401 - fail before measuring, not after, when the extra is missing

    out = Console()
    err = Console(stderr=True)
    if args.target:
        targets: list[Target] = [parse_target(args.target, sql=args.sql)]
    else:
        if args.sql:
            raise CLIError("--sql needs a database TARGET; the embedded default has its own query")
        targets = embedded_targets(
            args.http_work_ms / 1000.0, args.http_setup_ms / 1000.0, args.http_workers
        )
    try:
        for target in targets:
            target.probe()
        out_dir = _out_dir(args.out)
        per_run = config.duration_s + config.warmup_s
        est = len(targets) * config.runs * per_run
        err.print(
            f"[bold]poolkit bench[/]: {len(targets)} target(s) x {config.runs} runs x "
            f"{per_run:g} s = about {est:.0f} s"
        )
        measured: list[tuple[Target, list[RunResult]]] = []
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("[dim]{task.fields[step]}"),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            tasks = [progress.add_task(t.label, total=config.runs, step="waiting") for t in targets]
            for target, task in zip(targets, tasks, strict=True):

                def on_progress(done: float, label: str, task: TaskID = task) -> None:
                    progress.update(task, completed=done, step=label)

                results = sweep(target, config, on_progress)
                progress.update(task, completed=config.runs, step="done")
                measured.append((target, results))
    finally:
        for target in targets:
            target.cleanup()

    report = build_report(config, measured)
    for target, results in measured:
        out.print(_table(target, results, config))
        for c in config.concurrency:
            rec = recommend(results, c)
            if rec is not None:
                out.print(_recommendation_line(target, rec))
        out.print()
    json_path = out_dir / "bench.json"
    png_path = out_dir / "bench.png"
    write_json(json_path, report)
    write_chart(png_path, report)
    out.print(f"wrote {json_path}")
    out.print(f"wrote {png_path}")
    return 0


def _table(target: Target, results: Sequence[RunResult], config: BenchConfig) -> Table:
    table = Table(title=f"{target.label}  ({target.description})", title_justify="left")
    table.add_column("threads", justify="right")
    table.add_column("pool size", justify="right")
    table.add_column("req/s", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("speedup", justify="right")
    table.add_column("conns", justify="right")
    table.add_column("errors", justify="right")
    for c in config.concurrency:
        rec = recommend(results, c)
        rows = [r for r in results if r.concurrency == c]
        base = next((r for r in rows if r.mode == "unpooled"), None)
        for r in rows:
            pooled = r.mode == "pooled"
            ratio = (
                f"{r.throughput_rps / base.throughput_rps:.1f}x"
                if pooled and base is not None and base.throughput_rps
                else ""
            )
            picked = pooled and rec is not None and r.pool_size == rec.pool_size
            style = "bold green" if picked else ("dim" if not pooled else None)
            table.add_row(
                str(c),
                (f"{r.pool_size}" + (" *" if picked else "")) if pooled else "no pool",
                f"{r.throughput_rps:,.0f}",
                fmt_ms(r.p50_ms),
                fmt_ms(r.p99_ms),
                ratio,
                str(r.connections_opened),
                str(r.errors) if r.errors else "",
                style=style,
                end_section=r is rows[-1],
            )
    table.caption = "* recommended: the smallest pool within 5% of the best throughput"
    return table


def _recommendation_line(target: Target, rec: Recommendation) -> str:
    return f"[bold]concurrency {rec.concurrency}: max_size={rec.pool_size}[/]  {rec.explanation}"
