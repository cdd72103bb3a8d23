"""Constants that the engine's side (``_base``) and the worker's (``_worker``) share.

A module of its own, importing nothing: a first call imports the engine's side before it
starts the fork server, and a worker process imports the worker's side only; neither
should bring in the other just for these.
"""

from __future__ import annotations

__all__ = ["FULL", "KWARGS", "SET_ASIDE", "SINGLE", "STAR"]

# How an item becomes a call of the task function.
SINGLE = 0  # fn(item)
STAR = 1  # fn(*item)
KWARGS = 2  # fn(**item)
FULL = 3  # item is (fn, args, kwargs)

# The traceback of an attempt that is retried: nobody reads it, so it is not kept.
SET_ASIDE = "(not kept: this attempt failed with an error that is retried)\n"
