"""Allocator settings for a run's processes, so memory freed by a step goes back to the
operating system and a long run's resident memory follows what it holds, not its past.

Three settings, applied when ``nhr`` is imported (``configure``), each only where the user
has not set its environment variable:

- ``ARROW_DEFAULT_MEMORY_POOL=system``: Arrow allocates through the C library instead of
  its bundled mimalloc, which keeps the pages of freed shards, table reads and record
  batches for reuse. Arrow reads the variable once, when ``pyarrow`` is first loaded, so
  this applies to a process that imports ``nhr`` before ``pyarrow`` (the CLI, a notebook
  kernel, the benchmarks), and to every process it starts (kernels, workers).
- glibc's arenas capped at ``MALLOC_ARENA_MAX`` = 2 (``mallopt`` here, the variable for
  child processes): with one arena per thread, the freed memory of a stage's threads
  stays scattered over many arenas that are never given back whole.
- glibc's mmap threshold fixed at ``MALLOC_MMAP_THRESHOLD_`` = 1 MiB: by default it
  rises to 32 MiB once a large block is freed, after which a whole-table step's large
  buffers come from the heap and, freed, stay in it (at 6,329 prompts, 160 MB of free
  heap held after the bootstrap steps). Above the threshold a buffer is mapped on its
  own and unmapped when freed.

``give_back`` (glibc's ``malloc_trim``) returns the heap's free pages after a step.

On the engine benchmark (``scripts/bench_engine.py --prompts 2000``, null world) the
peak resident memory of the whole chain falls from about 520 MB to about 400 MB.
``ARROW_DEFAULT_MEMORY_POOL=mimalloc`` (or ``jemalloc``) and ``MALLOC_ARENA_MAX=8`` set
by the user are kept.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

ARROW_POOL = "system"
ARENA_MAX = 2
MMAP_THRESHOLD = 1 << 20
# glibc's mallopt parameter numbers (malloc.h) and the variables that set them at start
_MALLOPT = {"MALLOC_ARENA_MAX": (-8, ARENA_MAX), "MALLOC_MMAP_THRESHOLD_": (-3, MMAP_THRESHOLD)}


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc (the symbols this process already has), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def configure() -> dict[str, str]:
    """Apply the settings this process and its children can still take; returns what
    was set (name -> value), for the record."""
    applied: dict[str, str] = {}
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = ARROW_POOL
        applied["ARROW_DEFAULT_MEMORY_POOL"] = ARROW_POOL
    libc = _libc()
    for name, (param, value) in _MALLOPT.items():
        if name in os.environ or libc is None:
            continue
        os.environ[name] = str(value)  # for the processes this one starts
        if libc.mallopt(param, value) == 1:
            applied[name] = str(value)
    return applied


def give_back() -> None:
    """Return the C heap's free pages to the system (after a step that freed much)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
