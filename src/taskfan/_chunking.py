"""Adaptive chunk sizes: tiny tasks travel in large chunks, slow ones one at a time."""

from __future__ import annotations

import math

__all__ = ["MAX_CHUNK", "ChunkSizer"]

#: No chunk is larger than this, whatever the estimate: it bounds the memory one message
#: holds and the work redone if a worker process dies in the middle of it.
MAX_CHUNK = 50_000


class ChunkSizer:
    """Chooses how many items the next chunk carries, from measured time per item.

    It starts at one item, keeps a moving estimate of the seconds per item, and aims each
    chunk at ``target`` seconds of work. A chunk is at most eight times the number of
    items measured so far, so one fast first call does not send a thousand slow ones to
    one worker. When the number of items left is known, no chunk takes more than a
    quarter of a fair share per worker, so that workers finish close together, unless
    that would cut it below ``floor`` seconds of work (dispatch would then cost more
    than balance gains).
    """

    def __init__(
        self, target: float, workers: int, fixed: int | None = None, floor: float | None = None
    ) -> None:
        self.target = target
        self.floor = target / 8 if floor is None else floor
        self.workers = workers
        self.fixed = fixed
        self.per_item: float | None = None
        self.measured = 0

    def observe(self, items: int, seconds: float) -> None:
        """A chunk of ``items`` items took ``seconds`` of work.

        A chunk far smaller than today's size (a handful of retries, say) moves the
        estimate in proportion: its few items say little, and their cost is rarely the
        rest's (a retried item went through its failure first).
        """
        if items <= 0:
            return
        sample = max(seconds, 0.0) / items
        if self.per_item is None:
            self.per_item = sample
        else:
            weight = 0.4 * min(1.0, items / self.size())
            self.per_item += weight * (sample - self.per_item)
        self.measured += items

    def size(self, remaining: int | None = None) -> int:
        """Items for the next chunk; ``remaining`` is how many are left, if known."""
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            return 1
        ideal = self.target / self.per_item if self.per_item > 0 else float(MAX_CHUNK)
        size = min(ideal, 8.0 * self.measured, float(MAX_CHUNK))
        if remaining is not None:
            worth = self.floor / self.per_item if self.per_item > 0 else float(MAX_CHUNK)
            size = min(size, max(math.ceil(remaining / (4 * self.workers)), worth))
        return max(1, int(size))
