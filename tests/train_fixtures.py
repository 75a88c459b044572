"""Tiny exports in the layout ``nhr.stages.export`` writes (parquet shards with the
images embedded under the export's own features, and its card), for the trainer and
``export-for`` tests: coloured squares whose instruction names the colour they become."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from nhr.stages.dataset_card import write_card
from nhr.stages.export import FLOAT_COLUMNS, INT_COLUMNS, TEXT_COLUMNS, triplet_features

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def triplet_images(
    i: int, size: tuple[int, int], seed: int = 0
) -> tuple[Image.Image, Image.Image, str]:
    """A noisy grey source with a square, the square recoloured, and the instruction."""
    rng = np.random.default_rng([seed, i])
    w, h = size
    src = np.full((h, w, 3), 128, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    name = list(COLOURS)[i % len(COLOURS)]
    edited = src.copy()
    edited[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = COLOURS[name]
    return Image.fromarray(src), Image.fromarray(edited), f"make the middle square {name}"


def write_export(
    folder: Path, n: int, size: tuple[int, int] = (64, 64), shard_rows: int = 1000, seed: int = 0
) -> Path:
    """An export folder of ``n`` triplets at ``size`` (w, h) in shards of ``shard_rows``."""
    feats = triplet_features()
    schema = feats.arrow_schema
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for s, lo in enumerate(range(0, n, shard_rows)):
        ids = range(lo, min(n, lo + shard_rows))
        cols: dict[str, list] = {c: [] for c in schema.names}
        for i in ids:
            src, edited, text = triplet_images(i, size, seed)
            cols["source_image"].append({"bytes": _png(src), "path": None})
            cols["edited_image"].append({"bytes": _png(edited), "path": None})
            for c in TEXT_COLUMNS:
                cols[c].append(f"{c}-{i}")
            cols["triplet_id"][-1] = f"t{i:06d}"
            cols["instruction"][-1] = text
            for c in INT_COLUMNS:
                cols[c].append(0)
            cols["width"][-1], cols["height"][-1] = size
            for c in FLOAT_COLUMNS:
                cols[c].append(5.0)
            cols["parents"].append([])
        table = pa.Table.from_pydict(cols, schema=schema)
        pq.write_table(table, data / f"train-fp-{s:05d}-of-{(n - 1) // shard_rows + 1:05d}.parquet")
    write_card(folder, {"default": ("data/train-fp-*.parquet", n)}, n, "A test export.\n")
    return folder
