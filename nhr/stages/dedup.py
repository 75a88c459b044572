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
Hashes live in a table keyed by image (``image_hashes``), computed once per image and
reused by every later dedup of the run, so a rerun loads no image but those a hash match
must confirm on pixels.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from nhr.images import as_rgb
from nhr.tables import SCHEMAS, flat, take

ORIGIN_RANK = {"mined": 0, "inverted": 1, "composed": 2}


def perceptual_hash(image: Image.Image) -> Any:
    """The 64-bit DCT perceptual hash of an image."""
    import imagehash

    return imagehash.phash(image)


def changed_share(a: Image.Image, b: Image.Image, threshold: int = 40) -> float:
    """Share of pixels whose largest channel difference exceeds ``threshold``."""
    if a.size != b.size:
        return 1.0
    x = np.asarray(as_rgb(a), dtype=np.int16)
    y = np.asarray(as_rgb(b), dtype=np.int16)
    return float((np.abs(x - y).max(axis=2) > threshold).mean())


HASHES_TABLE = "image_hashes"
HASHES_SCHEMA = SCHEMAS[HASHES_TABLE]


class BandIndex:
    """Finds kept rows whose 64-bit hash is within ``max_distance`` bits of a query.

    The hash is cut into ``max_distance + 1`` bands; two hashes that differ in at most
    ``max_distance`` bits agree on at least one band (pigeonhole), so looking up each band
    finds every candidate without comparing against all kept rows.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.n_bands = max_distance + 1
        edges = np.linspace(0, 64, self.n_bands + 1).astype(int)
        self.edges = [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in itertools.pairwise(edges)]
        self.buckets: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)

    def _bands(self, bits: int) -> list[tuple[int, int]]:
        return [(i, (bits >> lo) & mask) for i, (lo, mask) in enumerate(self.edges)]

    def add(self, bits: int, row: int) -> None:
        """Index a kept row (its position) by its hash."""
        for band in self._bands(bits):
            self.buckets[band].append((bits, row))

    def near(self, bits: int) -> list[int]:
        """Kept rows whose hash is within ``max_distance`` bits, each once, in the order
        they are found band by band."""
        found: dict[int, None] = {}
        for band in self._bands(bits):
            for other_bits, row in self.buckets.get(band, []):
                if (other_bits ^ bits).bit_count() <= self.max_distance:
                    found[row] = None
        return list(found)


def hash_bits(image: Image.Image) -> int:
    """The perceptual hash of an image as a 64-bit integer."""
    bits = np.asarray(perceptual_hash(image).hash, dtype=bool).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def image_hashes(
    images: pa.Array | pa.ChunkedArray,
    known: pa.Table | None,
    load: Callable[[str], Image.Image],
) -> tuple[pa.Table, dict[str, int]]:
    """The perceptual-hash table (``image``, ``phash``) covering ``images``: the rows of
    ``known`` plus a hash for each image not in it (the only images loaded), and how many
    were reused and computed."""
    known = known if known is not None else HASHES_SCHEMA.empty_table()
    images = pc.unique(flat(images))
    missing = images.filter(pc.invert(pc.is_in(images, value_set=flat(known.column("image")))))
    new = [hash_bits(load(rel)) for rel in missing.to_pylist()]
    table = pa.concat_tables(
        [
            known.cast(HASHES_SCHEMA),
            pa.table({"image": missing.cast(pa.string()), "phash": pa.array(new, pa.uint64())}),
        ]
    )
    return table, {"reused": len(images) - len(missing), "computed": len(missing)}


def dedup(
    rows: pa.Table,
    hashes: pa.Table,
    load: Callable[[str], Image.Image],
    max_distance: int = 4,
    max_changed_share: float = 0.001,
) -> tuple[pa.Table, dict[str, int], dict[str, str]]:
    """Kept rows (in keep order), drops by reason, and for each dropped id the id of the
    row it duplicates. ``hashes`` is the table from :func:`image_hashes`; images are
    loaded only to confirm a hash match on pixels."""
    rank = pc.fill_null(
        pc.index_in(rows.column("origin"), value_set=pa.array(list(ORIGIN_RANK))), len(ORIGIN_RANK)
    )
    order = (
        pa.table(
            {
                "rank": rank,
                "score": rows.column("score"),
                "triplet_id": rows.column("triplet_id"),
                "row": np.arange(rows.num_rows),
            }
        )
        .sort_by([("rank", "ascending"), ("score", "descending"), ("triplet_id", "ascending")])
        .column("row")
        .to_numpy()
    )
    ordered = take(rows, order)
    ids = ordered.column("triplet_id").to_pylist()
    sources = ordered.column("source_image").to_pylist()
    edits = ordered.column("edited_image").to_pylist()
    bits = dict(
        zip(hashes.column("image").to_pylist(), hashes.column("phash").to_pylist(), strict=True)
    )
    images: dict[str, Image.Image] = {}

    def image(rel: str) -> Image.Image:
        if rel not in images:
            images[rel] = load(rel)
        return images[rel]

    index = BandIndex(max_distance)
    keep = np.zeros(len(ids), dtype=bool)
    seen_pairs: dict[tuple[str, str], str] = {}
    drops: Counter[str] = Counter()
    duplicate_of: dict[str, str] = {}
    for i, (tid, src, edit) in enumerate(zip(ids, sources, edits, strict=True)):
        pair = (src, edit)
        if pair in seen_pairs:
            drops["exact_duplicate"] += 1
            duplicate_of[tid] = seen_pairs[pair]
            continue
        h_edit = bits[edit]
        match = next(
            (
                j
                for j in index.near(bits[src])
                if (bits[edits[j]] ^ h_edit).bit_count() <= max_distance
                and changed_share(image(sources[j]), image(src)) <= max_changed_share
                and changed_share(image(edits[j]), image(edit)) <= max_changed_share
            ),
            None,
        )
        if match is not None:
            drops["near_duplicate"] += 1
            duplicate_of[tid] = ids[match]
            continue
        keep[i] = True
        seen_pairs[pair] = tid
        index.add(bits[src], i)
    return ordered.filter(pa.array(keep)), dict(drops), duplicate_of
