"""BufferPool: size classes, clearing, bounds with LRU release, safety, readinto and threads."""

from __future__ import annotations

import gc
import io
import os
import random
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit.buffers import BufferPool, BufferPoolStats, to_arrow
from poolkit.errors import ReleaseError

KiB = 1024


def check_invariants(s: BufferPoolStats) -> None:
    assert s.gets == s.news + s.reuses
    assert s.puts == s.kept + s.dropped_foreign + s.dropped_in_use + s.dropped_full
    assert 0 <= s.idle_bytes <= s.max_bytes
    assert sum(n for _, n in s.idle_by_class) == s.idle_buffers
    assert sum(size * n for size, n in s.idle_by_class) == s.idle_bytes
    for size, n in s.idle_by_class:
        assert size * n <= s.max_class_bytes
    assert s.idle_buffers == s.kept - s.reuses - s.evicted


def test_get_returns_an_exact_writable_view_over_a_class_buffer() -> None:
    pool = BufferPool()
    view = pool.get(3000)
    assert isinstance(view, memoryview)
    assert len(view) == 3000
    assert not view.readonly
    assert view.format == "B"
    assert len(view.obj) == 4096  # type: ignore[arg-type]
    view[:3] = b"abc"
    assert pool.class_for(3000) == 4096
    assert pool.class_for(1) == 1024
    assert pool.class_for(1 << 30) is None
    assert pool.sizes[0] == 1024
    assert pool.sizes[-1] == 16 * 1024 * KiB
    pool.put(view)


def test_put_then_get_reuses_and_clears() -> None:
    pool = BufferPool()
    view = pool.get(4096)
    view[:] = b"\xaa" * 4096
    pool.put(view)
    again = pool.get(4000)
    assert bytes(again) == bytes(4000)
    s = pool.stats()
    assert (s.gets, s.news, s.reuses, s.kept) == (2, 1, 1, 1)
    assert s.cleared_bytes == 4096
    pool.put(again)
    check_invariants(pool.stats())


def test_large_buffers_are_cleared_too() -> None:
    pool = BufferPool()
    view = pool.get(1 << 20)
    view[:] = b"\x5a" * (1 << 20)
    pool.put(view)
    again = pool.get(1 << 20)
    assert pool.stats().reuses == 1
    assert again.tobytes().count(0) == 1 << 20
    pool.put(again)


def test_clear_on_put_off_keeps_the_old_bytes() -> None:
    pool = BufferPool(clear_on_put=False)
    assert not pool.clear_on_put
    view = pool.get(100)
    view[:5] = b"stale"
    pool.put(view)
    again = pool.get(100)
    assert pool.stats().reuses == 1
    assert bytes(again[:5]) == b"stale"
    assert pool.stats().cleared_bytes == 0


def test_use_after_put_raises_instead_of_reading_the_next_users_data() -> None:
    pool = BufferPool()
    view = pool.get(10)
    pool.put(view)
    with pytest.raises(ValueError, match="released"):
        view[0]


def test_double_put_raises_release_error() -> None:
    pool = BufferPool()
    view = pool.get(10)
    pool.put(view)
    with pytest.raises(ReleaseError, match="already returned"):
        pool.put(view)
    raw = bytearray(1024)
    pool.put(raw)
    before = pool.stats()
    with pytest.raises(ReleaseError, match="twice"):
        pool.put(raw)
    assert pool.stats() == before


def test_a_buffer_still_referenced_is_dropped_not_reused() -> None:
    pool = BufferPool()
    view = pool.get(64)
    kept_slice = view[:8]
    pool.put(view)
    s = pool.stats()
    assert s.dropped_in_use == 1
    assert s.idle_buffers == 0
    kept_slice[:] = b"mine!!!!"  # still valid, and nobody else will get this memory
    fresh = pool.get(64)
    assert bytes(fresh[:8]) == bytes(8)
    check_invariants(pool.stats())


def test_a_buffer_whose_bytearray_is_still_held_is_dropped() -> None:
    pool = BufferPool()
    view = pool.get(64)
    base = view.obj
    pool.put(view)
    assert pool.stats().dropped_in_use == 1
    assert pool.get(64).obj is not base


def test_foreign_sizes_and_objects_are_dropped() -> None:
    pool = BufferPool(sizes=[1024, 4096])
    pool.put(bytearray(1000))
    pool.put(memoryview(bytearray(2048)))
    pool.put(memoryview(b"read-only bytes"))
    s = pool.stats()
    assert s.dropped_foreign == 3
    assert s.idle_buffers == 0
    with pytest.raises(TypeError, match="not bytes"):
        pool.put(b"x" * 1024)  # type: ignore[arg-type]
    check_invariants(s)


def test_oversize_requests_get_unpooled_buffers() -> None:
    pool = BufferPool(sizes=[1024])
    view = pool.get(5000)
    assert len(view) == 5000
    pool.put(view)
    s = pool.stats()
    assert (s.oversize, s.news, s.dropped_foreign, s.idle_buffers) == (1, 1, 1, 0)


def test_per_class_bound_releases_least_recently_returned_first() -> None:
    pool = BufferPool(sizes=[1024, 4096], max_class_bytes=2048)
    a, b, c = bytearray(1024), bytearray(1024), bytearray(1024)
    for buf in (a, b, c):
        pool.put(buf)
    s = pool.stats()
    assert s.idle_by_class == ((1024, 2),)
    assert s.evicted == 1
    first, second = pool.get(1024), pool.get(1024)
    assert first.obj is c  # most recent first
    assert second.obj is b  # a, the oldest, was released
    check_invariants(pool.stats())


def test_total_bound_releases_the_lru_buffer_across_classes() -> None:
    pool = BufferPool(sizes=[1024, 4096], max_bytes=5 * KiB)
    big, s1, s2 = bytearray(4096), bytearray(1024), bytearray(1024)
    pool.put(big)
    pool.put(s1)
    pool.put(s2)  # 6 KiB > 5 KiB: the LRU buffer (big) goes
    s = pool.stats()
    assert s.idle_by_class == ((1024, 2),)
    assert s.idle_bytes == 2048
    assert s.evicted == 1
    pool.put(bytearray(4096))  # 6 KiB again: the older 1 KiB buffer (s1) goes
    s = pool.stats()
    assert s.idle_by_class == ((1024, 1), (4096, 1))
    assert s.evicted == 2
    assert pool.get(1024).obj is s2
    check_invariants(s)


def test_a_buffer_larger_than_the_bounds_is_dropped() -> None:
    pool = BufferPool(sizes=[1024, 8192], max_bytes=4096)
    pool.put(bytearray(1024))
    pool.put(bytearray(8192))
    s = pool.stats()
    assert s.dropped_full == 1
    assert s.idle_by_class == ((1024, 1),)


def test_trim_and_clear() -> None:
    pool = BufferPool(sizes=[1024])
    for _ in range(4):
        pool.put(bytearray(1024))
    assert pool.trim(2048) == 2048
    assert pool.stats().idle_buffers == 2
    assert pool.clear() == 2048
    s = pool.stats()
    assert s.idle_bytes == 0
    assert s.evicted == 4


def test_bad_configuration_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"buffer size \(0\) must be an int >= 1"):
        BufferPool(sizes=[0, 1024])
    with pytest.raises(ValueError, match=r"sizes \(\[\]\)"):
        BufferPool(sizes=[])
    with pytest.raises(ValueError, match=r"max_bytes \(-1\) must be >= 0"):
        BufferPool(max_bytes=-1)
    with pytest.raises(ValueError, match=r"max_class_bytes \(-5\) must be >= 0"):
        BufferPool(max_class_bytes=-5)
    with pytest.raises(ValueError, match=r"n \(-1\) must be an int >= 0"):
        BufferPool().get(-1)
    with pytest.raises(ValueError, match=r"max_bytes \(-2\)"):
        BufferPool().trim(-2)


def test_repr() -> None:
    pool = BufferPool(sizes=[1024, 2048], name="net")
    assert repr(pool) == (
        "<BufferPool 'net' idle=0 buffers 0/67108864 bytes classes=1024..2048 clear_on_put=True>"
    )


def test_works_with_file_readinto(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    pool = BufferPool()
    out = bytearray()
    with path.open("rb") as f:  # an io.BufferedReader
        while True:
            with pool.borrow(16 * KiB) as view:
                n = f.readinto(view)
                if not n:
                    break
                out += view[:n]
    assert out == data
    with path.open("rb", buffering=0) as raw:  # a FileIO
        with pool.borrow(len(data)) as view:
            assert raw.readinto(view) == len(data)
            assert view == data
    assert pool.stats().reuses >= 4


def test_works_with_bytesio_and_buffered_readers() -> None:
    pool = BufferPool()
    reader: io.BufferedIOBase = io.BufferedReader(io.BytesIO(b"x" * 5000))  # type: ignore[arg-type]
    with pool.borrow(4096) as view:
        assert reader.readinto(view) == 4096
    with pool.borrow(4096) as view:
        assert reader.readinto(view) == 904
        assert bytes(view[:904]) == b"x" * 904
        assert bytes(view[904:]) == bytes(4096 - 904)  # cleared, not the previous read


def test_works_with_socket_recv_into() -> None:
    pool = BufferPool()
    a, b = socket.socketpair()
    with a, b:
        payload = os.urandom(3000)
        a.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            with pool.borrow(1024) as view:
                n = b.recv_into(view)
                got += view[:n]
        assert got == payload


def test_to_arrow_is_zero_copy_and_pins_the_buffer() -> None:
    pa = pytest.importorskip("pyarrow")
    pool = BufferPool()
    view = pool.get(8 * 4)
    view.cast("q")[:] = memoryview(bytes(32)).cast("q")
    view.cast("q")[2] = 42
    arr = pa.Array.from_buffers(pa.int64(), 4, [None, to_arrow(view)])
    assert arr.to_pylist() == [0, 0, 42, 0]
    view.cast("q")[0] = 7  # zero copy: arrow sees the change
    assert arr[0].as_py() == 7
    pool.put(view)  # pinned by arrow: dropped, never reused
    assert pool.stats().dropped_in_use == 1
    assert arr.to_pylist() == [7, 0, 42, 0]
    view2 = pool.get(32)
    buf = to_arrow(view2)
    del buf
    gc.collect()
    pool.put(view2)  # arrow let go: reused
    assert pool.stats().kept == 1


def test_32_threads_never_share_a_buffer_and_see_only_zeros() -> None:
    pool = BufferPool(sizes=[1024, 4096, 16384], max_bytes=96 * KiB, max_class_bytes=48 * KiB)
    errors: list[str] = []
    start = threading.Barrier(32)

    def worker(me: int) -> None:
        rng = random.Random(me)
        start.wait(timeout=30)
        mark = bytes([me + 1])
        for _ in range(150):
            n = rng.choice([100, 1024, 3000, 4096, 9000, 16384])
            with pool.borrow(n) as view:
                if view.tobytes().count(0) != n:
                    errors.append(f"thread {me}: got a buffer with someone's data")
                view[:] = mark * n
                if view.tobytes() != mark * n:
                    errors.append(f"thread {me}: buffer shared with another thread")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    s = pool.stats()
    assert s.gets == s.puts == 32 * 150
    assert s.reuses > 0
    check_invariants(s)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["get", "put", "trim"]), st.integers(0, 20_000)),
        max_size=40,
    )
)
def test_bounds_and_counters_hold_for_any_sequence(ops: list[tuple[str, int]]) -> None:
    pool = BufferPool(sizes=[512, 2048, 8192], max_bytes=12_000, max_class_bytes=8192)
    out: list[memoryview] = []
    for op, n in ops:
        if op == "get":
            view = pool.get(n)
            assert len(view) == n
            assert view.tobytes().count(0) == n
            view[: min(n, 4)] = b"\xff" * min(n, 4)
            out.append(view)
        elif op == "put" and out:
            pool.put(out.pop(n % len(out)))
        elif op == "trim":
            pool.trim(n)
            assert pool.stats().idle_bytes <= n
        check_invariants(pool.stats())
