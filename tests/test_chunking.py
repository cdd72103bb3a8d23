"""Adaptive chunk sizes: tiny calls batched, slow calls one by one, balanced at the end."""

from __future__ import annotations

from taskfan._chunking import MAX_CHUNK, ChunkSizer


def test_starts_at_one_item() -> None:
    assert ChunkSizer(0.002, 4).size(1000) == 1


def test_tiny_items_grow_into_large_chunks_by_evidence() -> None:
    sizer = ChunkSizer(0.002, 4)
    sizes = []
    for _ in range(6):
        size = sizer.size()
        sizes.append(size)
        sizer.observe(size, size * 1e-8)
    assert sizes[0] == 1
    assert all(b <= 8 * sum(sizes[: i + 1]) for i, b in enumerate(sizes[1:]))
    assert sizes[-1] == MAX_CHUNK


def test_slow_items_go_one_at_a_time() -> None:
    sizer = ChunkSizer(0.002, 100)
    sizer.observe(1, 0.01)
    sizer.observe(1, 0.01)
    assert sizer.size(1000) == 1


def test_known_remainder_is_shared_among_workers() -> None:
    sizer = ChunkSizer(0.002, 4)
    sizer.observe(1000, 1000 * 1e-5)  # 10 us per item: ideal 200 per chunk
    assert sizer.size(100_000) == 200
    assert sizer.size(1600) == 100  # a quarter of a fair share
    assert sizer.size(10) == 25  # but never below the floor: an eighth of the target


def test_fixed_chunksize_is_kept() -> None:
    sizer = ChunkSizer(0.002, 4, fixed=7)
    sizer.observe(7, 1.0)
    assert sizer.size(3) == 7
