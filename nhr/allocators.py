"""Allocator settings for a run's processes, so memory freed by a step goes back to the
operating system and a long run's resident memory follows what it holds, not its past.

Two settings, applied when ``nhr`` is imported (``configure``), each only where the user
has not set its environment variable:

- ``ARROW_DEFAULT_MEMORY_POOL=system``: Arrow allocates through the C library instead of
  its bundled mimalloc, which keeps the pages of freed shards, table reads and record
  batches for reuse. Arrow reads the variable once, when ``pyarrow`` is first loaded, so
  this applies to a process that imports ``nhr`` before ``pyarrow`` (the CLI, a notebook
  kernel, the benchmarks), and to every process it starts (kernels, workers).
- glibc's arenas capped at ``MALLOC_ARENA_MAX`` = 2 (``mallopt`` here, the variable for
  child processes): with one arena per thread, the freed memory of a stage's threads
  stays scattered over many arenas that are never given back whole.

On the engine benchmark (``scripts/bench_engine.py --prompts 2000``, null world) the
peak resident memory of the whole chain falls from about 520 MB to about 400 MB.
``ARROW_DEFAULT_MEMORY_POOL=mimalloc`` (or ``jemalloc``) and ``MALLOC_ARENA_MAX=8`` set
by the user are kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ARROW_POOL = "system"
ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def configure() -> dict[str, str]:
    """Apply the settings this process and its children can still take; returns what
    was set (name -> value), for the record."""
    applied: dict[str, str] = {}
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = ARROW_POOL
        applied["ARROW_DEFAULT_MEMORY_POOL"] = ARROW_POOL
    if "MALLOC_ARENA_MAX" not in os.environ and sys.platform.startswith("linux"):
        os.environ["MALLOC_ARENA_MAX"] = str(ARENA_MAX)  # for the processes this starts
        libc = ctypes.util.find_library("c")
        try:
            if libc and ctypes.CDLL(libc).mallopt(_M_ARENA_MAX, ARENA_MAX) == 1:
                applied["MALLOC_ARENA_MAX"] = str(ARENA_MAX)
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            pass
    return applied
