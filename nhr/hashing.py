"""64-bit hashes in numpy: splitmix64, and fingerprints of Arrow string arrays.

The runner uses fingerprints to find input keys already done and to refuse duplicate
keys without a Python set of millions of strings; the edit planner uses splitmix64 to
give every job of the grid a pseudo-random priority without building the grid.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
FINGERPRINT_ROWS = 65_536  # keys turned into Python strings at once by ``fingerprints``
_MIN_BITS_LOG2 = 16  # the smallest bitmap of a ``KeySet``: 8 KiB


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden`` (uint64 in, uint64 out, wrapping)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def fingerprints(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of every string of ``keys`` (uint64), valid within this process.

    Python's string hash (SipHash, salted per process) is the fastest exact-enough
    hash at hand: fingerprints are compared only within one process and never stored.
    Distinct keys collide with probability about 2⁻⁶⁴ per pair. The strings are made
    ``FINGERPRINT_ROWS`` at a time, so millions of keys never exist as Python objects
    at once.
    """
    out = np.empty(len(keys), dtype=np.int64)
    for lo in range(0, len(keys), FINGERPRINT_ROWS):
        values = keys.slice(lo, FINGERPRINT_ROWS).to_pylist()
        out[lo : lo + len(values)] = np.fromiter(map(hash, values), np.int64, len(values))
    return out.view(np.uint64)


class KeySet:
    """A growing set of string keys held as sorted fingerprint runs (binary-counter
    merges keep the number of runs logarithmic): membership and duplicates in numpy.

    A bitmap of about a byte per key (one bit per fingerprint's top bits) answers
    "absent" for most keys that are not in the set; only the rest are searched in the
    runs. A binary search of a run of millions misses the cache at nearly every level,
    and a chain asks about every key it sends or takes, nearly all of them new.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._n = 0
        self._shift = np.uint64(64 - _MIN_BITS_LOG2)
        self._bits = np.zeros(1 << (_MIN_BITS_LOG2 - 3), dtype=np.uint8)

    def __len__(self) -> int:
        return self._n

    def _slots(self, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The byte and the bit mask of each fingerprint in the bitmap."""
        at = fps >> self._shift
        byte = (at >> np.uint64(3)).astype(np.intp)
        return byte, (np.uint64(1) << (at & np.uint64(7))).astype(np.uint8)

    def _maybe(self, fps: np.ndarray) -> np.ndarray:
        """False where a fingerprint is surely absent (its bit is clear)."""
        byte, bit = self._slots(fps)
        return (self._bits[byte] & bit) != 0

    def _mark(self, fps: np.ndarray) -> None:
        """Set the bits of ``fps``, first growing the bitmap to a byte per key."""
        need = max(_MIN_BITS_LOG2, int(self._n + len(fps)).bit_length() + 3)
        if need > 64 - int(self._shift):
            self._shift = np.uint64(64 - need)
            self._bits = np.zeros(1 << (need - 3), dtype=np.uint8)
            for run in self._runs:
                self._mark_bits(run)
        self._mark_bits(fps)

    def _mark_bits(self, fps: np.ndarray) -> None:
        byte, bit = self._slots(fps)
        np.bitwise_or.at(self._bits, byte, bit)

    def contains(self, fps: np.ndarray) -> np.ndarray:
        """Which fingerprints are already in the set."""
        hit = np.zeros(len(fps), dtype=bool)
        if not self._n or not len(fps):
            return hit
        maybe = np.flatnonzero(self._maybe(fps))
        if not len(maybe):
            return hit
        needles = fps[maybe]
        found = np.zeros(len(needles), dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, needles), len(run) - 1)
            found |= run[pos] == needles
        hit[maybe] = found
        return hit

    def add(self, fps: np.ndarray) -> int:
        """Add fingerprints; returns the index of the first one already present (in the
        set or earlier in ``fps``), or -1 when all are new."""
        if not len(fps):
            return -1
        order = np.argsort(fps, kind="stable")  # of equal ones, the later is the repeat
        ordered = fps[order]
        again = np.zeros(len(fps), dtype=bool)
        again[order[1:]] = ordered[1:] == ordered[:-1]
        again |= self.contains(fps)
        first = int(np.argmax(again)) if again.any() else -1
        self._mark(fps)
        self._runs.append(ordered)
        self._n += len(fps)
        while len(self._runs) > 1 and len(self._runs[-1]) >= len(self._runs[-2]):
            top, below = self._runs.pop(), self._runs.pop()
            self._runs.append(np.sort(np.concatenate([below, top]), kind="stable"))
        return first


class KeyIndex:
    """A fixed set of string keys (the input keys a table already covers, the ids a
    stream keeps): fingerprints for speed, strings for exactness. Unlike ``pc.is_in``,
    which hashes its whole value set on every call, the set is hashed once, so testing
    a table batch by batch costs time linear in the table."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(keys, pa.ChunkedArray):  # one chunk is held as it is, not copied
            keys = keys.chunk(0) if keys.num_chunks == 1 else keys.combine_chunks()
        self.keys = keys
        fps = fingerprints(keys)
        self.order = np.argsort(fps, kind="stable")  # a repeated key: its first place first
        self.sorted = fps[self.order]

    def __len__(self) -> int:
        return len(self.keys)

    def isin(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Which of ``keys`` are in the set (bool, one per key)."""
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        return self.mask(keys, fingerprints(keys))

    def positions(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Where each of ``keys`` is among the set's keys (int64; the first place of a
        repeated key), -1 where it is absent: ``pc.index_in`` with the set hashed once."""
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self.sorted) or not len(keys):
            return out
        fps = fingerprints(keys)
        pos = np.minimum(np.searchsorted(self.sorted, fps), len(self.sorted) - 1)
        idx = np.flatnonzero(self.sorted[pos] == fps)
        if len(idx):
            at = self.order[pos[idx]]
            same = pc.equal(keys.take(pa.array(idx)), self.keys.take(pa.array(at)))
            ok = np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
            out[idx[ok]] = at[ok]
        return out

    def mask(self, keys: pa.Array, fps: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (with fingerprints ``fps``) are done."""
        if not len(self.sorted) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(self.sorted, fps), len(self.sorted) - 1)
        hit = self.sorted[pos] == fps
        if hit.any():
            idx = np.flatnonzero(hit)
            mine = keys.take(pa.array(idx))
            theirs = self.keys.take(pa.array(self.order[pos[idx]]))
            same = np.asarray(pc.equal(mine, theirs).to_numpy(zero_copy_only=False))
            hit[idx[~same]] = False
        return hit
