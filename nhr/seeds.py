"""Derived seeds: every random choice in a run comes from the master seed and a name."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 31-bit seed derived from the parts (stable across processes and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy generator seeded from the parts."""
    return np.random.default_rng(derive_seed(*parts))
