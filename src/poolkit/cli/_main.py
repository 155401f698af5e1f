"""Argument parsing and the top-level error policy of the ``poolkit`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from poolkit.cli._errors import CLIError

__all__ = ["build_parser", "main"]

PROG = "poolkit"

MAIN_EPILOG = """\
examples:
  poolkit bench                                   # embedded SQLite + local HTTP server
  poolkit bench --quick                           # a few seconds
  poolkit bench postgresql://postgres@127.0.0.1:5432/test --concurrency 16
  poolkit bench http://127.0.0.1:8080/health --sizes 1,2,4,8
  poolkit demo                                    # 5 workers on 3 DB connections, 4 on 2 HTTP

'poolkit COMMAND --help' shows each command's options.
"""

BENCH_EPILOG = """\
TARGET is one of:
  (nothing)                       the embedded default: a temporary SQLite database and a local
                                  HTTP/1.1 keep-alive server, both benchmarked
  sqlite:///path/app.db           duckdb:///path/app.duckdb
  postgresql://user[:pw]@host[:port]/db    mysql://user[:pw]@host[:port]/db
  http(s)://host[:port]/path      GET requests on keep-alive connections

For each concurrency level it measures throughput and p50/p99 latency without pooling
(poolkit.NullPool: a new connection per request) and with poolkit.Pool at each pool size,
then recommends the smallest pool size within 5% of the best throughput.
It writes bench.json and bench.png to --out (default ./poolkit-bench-<timestamp>/).

examples:
  poolkit bench
  poolkit bench --quick --out /tmp/bench
  poolkit bench postgresql://postgres@127.0.0.1:5432/test --concurrency 8,32 --sizes 2,4,8,16
  poolkit bench sqlite:///app.db --sql "SELECT count(*) FROM users"
  poolkit bench https://example.internal/api/ping --duration 2
"""

DEMO_EPILOG = """\
The seed scenario with real resources: 5 workers share 3 connections to a temporary SQLite
database and 4 workers share 2 keep-alive connections to a local HTTP server. A live table
shows which worker holds which connection, and the pools' statistics are printed at the end.

examples:
  poolkit demo
  poolkit demo --speed 4          # four times faster
  poolkit demo --rounds 3         # each worker borrows three times
"""


_CLI_EXTRA = {"rich", "matplotlib", "h11"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised as CLIError, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 1,4,16"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is empty; give e.g. 1,4,16")
    bad = [v for v in values if v < 1 or v > 1024]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]} is out of range; each value must be 1-1024")
    return tuple(sorted(set(values)))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 and <= 3600 seconds")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 and <= 1000")
    return value


def _millis(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 10000 ms")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} must be between 1 and 100")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``poolkit`` argument parser with its ``bench`` and ``demo`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="poolkit: benchmark a database or HTTP target with and without pooling, "
        "or watch pooling happen.",
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="measure throughput and latency with and without pooling; recommend a pool size",
        description="Measure a target with and without pooling and recommend a pool size.",
        epilog=BENCH_EPILOG,
        formatter_class=fmt,
    )
    bench.add_argument("target", nargs="?", metavar="TARGET", help="database or http(s) URL")
    bench.add_argument(
        "--concurrency",
        type=_int_list,
        metavar="LIST",
        help="concurrent callers to simulate, comma-separated (default 1,4,16; --quick 1,4)",
    )
    bench.add_argument(
        "--sizes",
        type=_int_list,
        metavar="LIST",
        help="pool sizes (max_size) to try, comma-separated (default 1,2,4,8,16; --quick 1,2,4)",
    )
    bench.add_argument(
        "--duration",
        type=_seconds,
        metavar="SECONDS",
        help="measured time per run after a short warm-up (default 0.5; --quick 0.25)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a small sweep and short runs: a few seconds in all"
    )
    bench.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write bench.json and bench.png (default ./poolkit-bench-<timestamp>/)",
    )
    bench.add_argument(
        "--sql",
        metavar="STATEMENT",
        help="the statement each database request runs (default: SELECT 1)",
    )
    bench.add_argument(
        "--http-work-ms",
        type=_millis,
        default=2.0,
        metavar="MS",
        help="embedded HTTP server: work per request (default 2)",
    )
    bench.add_argument(
        "--http-workers",
        type=_count,
        default=4,
        metavar="N",
        help="embedded HTTP server: requests it works on at once (default 4)",
    )
    bench.add_argument(
        "--http-setup-ms",
        type=_millis,
        default=5.0,
        metavar="MS",
        help="embedded HTTP server: cost of a new connection, like a TLS handshake (default 5)",
    )

    demo = sub.add_parser(
        "demo",
        help="the seed scenario: workers sharing a few SQLite and HTTP connections, live",
        description="Workers sharing a few real SQLite and HTTP connections, shown live.",
        epilog=DEMO_EPILOG,
        formatter_class=fmt,
    )
    demo.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        metavar="FACTOR",
        help="run this many times faster than the seed's timings (default 1)",
    )
    demo.add_argument(
        "--rounds",
        type=_count,
        default=1,
        metavar="N",
        help="how many times each worker borrows a connection (default 1)",
    )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("poolkit")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``poolkit`` command; returns the exit code (2 for user errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return _dispatch(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("POOLKIT_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {text} "
            "(set POOLKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _dispatch(args: Any) -> int:
    try:
        if args.command == "bench":
            from poolkit.cli._bench_cmd import run_bench

            return run_bench(args)
        from poolkit.cli.demo import run_demo

        return run_demo(args)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing.split(".")[0] not in _CLI_EXTRA:
            raise
        raise CLIError(
            f"'poolkit {args.command}' needs the [cli] extra ({missing} is missing): "
            "pip install 'poolkit[cli]'"
        ) from None
