"""Dedup: drop exact and near-duplicate triplets, counting each drop by its reason.

- ``exact_duplicate``: the same (source image, edited image) content as a kept triplet —
  images are content-addressed, so equal paths are equal pixels. This also catches
  equivalent instructions written for the same pair.
- ``near_duplicate``: both images near-identical to a kept triplet's, found by a
  perceptual hash (``imagehash.phash``, Hamming distance ≤ ``max_distance`` on each
  image) and confirmed on pixels (at most ``max_changed_share`` of pixels differ by more
  than the low-level threshold), so two genuinely different small edits of one source
  are never merged on a hash collision alone.

Kept first: mined over inverted over composed, then the higher score, then the id.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from nhr.records import TripletRow

ORIGIN_RANK = {"mined": 0, "inverted": 1, "composed": 2}


def perceptual_hash(image: Image.Image) -> Any:
    """The 64-bit DCT perceptual hash of an image."""
    import imagehash

    return imagehash.phash(image)


def changed_share(a: Image.Image, b: Image.Image, threshold: int = 40) -> float:
    """Share of pixels whose largest channel difference exceeds ``threshold``."""
    if a.size != b.size:
        return 1.0
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    return float((np.abs(x - y).max(axis=2) > threshold).mean())


class BandIndex:
    """Finds kept rows whose 64-bit hash is within ``max_distance`` bits of a query.

    The hash is cut into ``max_distance + 1`` bands; two hashes that differ in at most
    ``max_distance`` bits agree on at least one band (pigeonhole), so looking up each band
    finds every candidate without comparing against all kept rows.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.n_bands = max_distance + 1
        self.buckets: dict[tuple[int, int], list[tuple[int, TripletRow]]] = defaultdict(list)

    def _bands(self, bits: int) -> list[tuple[int, int]]:
        edges = np.linspace(0, 64, self.n_bands + 1).astype(int)
        return [
            (i, (bits >> int(lo)) & ((1 << int(hi - lo)) - 1))
            for i, (lo, hi) in enumerate(itertools.pairwise(edges))
        ]

    def add(self, bits: int, row: TripletRow) -> None:
        """Index a kept row by its hash."""
        for band in self._bands(bits):
            self.buckets[band].append((bits, row))

    def near(self, bits: int) -> list[TripletRow]:
        """Kept rows whose hash is within ``max_distance`` bits, each once."""
        found: dict[str, TripletRow] = {}
        for band in self._bands(bits):
            for other_bits, row in self.buckets.get(band, []):
                if (other_bits ^ bits).bit_count() <= self.max_distance:
                    found[row.triplet_id] = row
        return list(found.values())


def hash_bits(image: Image.Image) -> int:
    """The perceptual hash of an image as a 64-bit integer."""
    bits = np.asarray(perceptual_hash(image).hash, dtype=bool).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def dedup(
    rows: list[TripletRow],
    load: Callable[[str], Image.Image],
    max_distance: int = 4,
    max_changed_share: float = 0.001,
) -> tuple[list[TripletRow], dict[str, int], dict[str, str]]:
    """Kept rows, drops by reason, and for each dropped id the id of the row it duplicates."""
    ordered = sorted(rows, key=lambda r: (ORIGIN_RANK.get(r.origin, 9), -r.score, r.triplet_id))
    hashes: dict[str, int] = {}

    def bits_of(rel: str) -> int:
        if rel not in hashes:
            hashes[rel] = hash_bits(load(rel))
        return hashes[rel]

    index = BandIndex(max_distance)
    kept: list[TripletRow] = []
    seen_pairs: dict[tuple[str, str], str] = {}
    drops: Counter[str] = Counter()
    duplicate_of: dict[str, str] = {}
    for row in ordered:
        pair = (row.source_image, row.edited_image)
        if pair in seen_pairs:
            drops["exact_duplicate"] += 1
            duplicate_of[row.triplet_id] = seen_pairs[pair]
            continue
        h_edit = bits_of(row.edited_image)
        match = next(
            (
                other
                for other in index.near(bits_of(row.source_image))
                if (bits_of(other.edited_image) ^ h_edit).bit_count() <= max_distance
                and changed_share(load(other.source_image), load(row.source_image))
                <= max_changed_share
                and changed_share(load(other.edited_image), load(row.edited_image))
                <= max_changed_share
            ),
            None,
        )
        if match is not None:
            drops["near_duplicate"] += 1
            duplicate_of[row.triplet_id] = match.triplet_id
            continue
        kept.append(row)
        seen_pairs[pair] = row.triplet_id
        index.add(bits_of(row.source_image), row)
    return kept, dict(drops), duplicate_of
