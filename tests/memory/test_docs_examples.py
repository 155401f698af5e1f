"""The examples of docs/memory.md, run for real."""

from __future__ import annotations

import io
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from poolkit import Pool, ReleaseError
from poolkit.buffers import BufferPool, to_arrow
from poolkit.objects import ObjectPool
from poolkit.workers import WorkerPool


def test_object_pool_example() -> None:
    pool = ObjectPool(io.BytesIO, reset=lambda b: (b.seek(0), b.truncate()), max_idle=8)
    with pool.borrow() as buf:
        buf.write(b"hello")
    buf = pool.get()
    assert buf.getvalue() == b""
    pool.put(buf)
    with pytest.raises(ReleaseError, match="twice"):
        pool.put(buf)
    s = pool.stats()
    assert (s.gets, s.puts, s.news, s.reuses, s.idle) == (2, 2, 1, 1, 1)
    assert f"{s.hit_rate:.0%}" == "50%"


def test_buffer_pool_example() -> None:
    pool = BufferPool(max_bytes=32 * 1024 * 1024)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"payload")
        with pool.borrow(65536) as view:
            n = b.recv_into(view)
            assert bytes(view[:n]) == b"payload"
    view = pool.get(3000)
    io.BytesIO(b"x" * 3000).readinto(view)
    pool.put(view)
    with pytest.raises(ValueError):
        view[0]


def test_arrow_example(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"x": list(range(1000))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    path = tmp_path / "t.arrows"
    path.write_bytes(sink.getvalue().to_pybytes())
    size = path.stat().st_size
    pool = BufferPool()
    for _ in range(2):
        with path.open("rb", buffering=0) as f:
            view = pool.get(size)
            f.readinto(view)
            got = pa.ipc.open_stream(to_arrow(view)).read_all()
            assert got.equals(table)
            del got
            pool.put(view)
    assert pool.stats().reuses == 1


def test_worker_pool_example(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as setup:
        setup.execute("create table users (id integer primary key, name text)")
        setup.executemany("insert into users values (?, ?)", [(i, f"u{i}") for i in range(100)])
    setup.close()
    pool = Pool(
        lambda: sqlite3.connect(db, check_same_thread=False),
        destroy=sqlite3.Connection.close,
        max_size=4,
    )
    q = "select name from users where id = ?"
    with WorkerPool(pool, max_queued=16, when_full="block") as ex:
        fut = ex.submit(lambda conn, uid: conn.execute(q, (uid,)).fetchone(), 42)
        names = list(ex.map(lambda conn, uid: conn.execute(q, (uid,)).fetchone()[0], range(100)))
    pool.close()
    assert fut.result() == ("u42",)
    assert names == [f"u{i}" for i in range(100)]
    assert os.path.exists(db)
