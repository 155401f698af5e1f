"""benchmarks/bench_core.py runs end to end (tiny durations; no speed is asserted)."""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_core.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_core", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_core"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_core", None)


def test_every_peer_and_scenario_runs(bench, tmp_path, capsys):
    # the benchmark calls gc.collect(): first flush garbage that earlier tests left behind
    # (their unclosed sockets would otherwise be reported as this test's failure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    out = tmp_path / "bench.json"
    only = "poolkit,floor,sqlalchemy,dbutils,gcp"
    md = tmp_path / "bench.md"
    args = ["--duration", "0.02", "--only", only, "--json", str(out), "--markdown", str(md)]
    assert bench.main(args) == 0
    assert md.read_text().count("\n| sync 64T/8R hold=sleep(0) |") == 5
    data = json.loads(out.read_text())
    assert data["skipped"] == {}, data["skipped"]
    rows = data["results"]
    impls = {r["impl"] for r in rows}
    assert {
        "poolkit Pool",
        "floor (Lock+deque)",
        "SQLAlchemy QueuePool",
        "DBUtils PooledDB",
        "generic-connection-pool",
        "poolkit AsyncPool",
        "floor (asyncio.Queue)",
        "SQLAlchemy AsyncAdaptedQueuePool",
    } <= impls
    scenarios = {r["scenario"] for r in rows}
    assert len(scenarios) == 8
    for r in rows:
        # contended cells this short may complete nothing on a loaded machine
        assert r["cycles"] > 0 if r["workers"] == 1 else r["cycles"] >= 0, r
        assert r["ns_per_cycle"] > 0 and r["vs_poolkit"] is not None, r
        if r["workers"] > 1:
            assert r["per_worker_min"] is not None and r["wait_max_ms"] is not None
            assert r["per_worker_min"] <= r["per_worker_mean"] <= r["per_worker_max"]
    printed = capsys.readouterr().out
    assert "x poolkit" in printed and "== sync 64T/8R hold=sleep(0)" in printed


def test_floor_pool_blocks_and_wakes(bench):
    import threading

    pool = bench.FloorPool(1)
    held = pool.get()
    got = []
    t = threading.Thread(target=lambda: got.append(pool.get()))
    t.start()
    pool.put(held)
    t.join(5)
    assert got == [held]
