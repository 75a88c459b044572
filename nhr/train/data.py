"""Triplets of an export, streamed for training: where the export is, which files hold
its training split, rows read a few at a time, and the bucket each triplet trains at.

An export (``nhr.stages.export``) is parquet shards with the images embedded and a card
whose front matter lists each config's files by split. Training reads the ``default``
config's ``train`` split when the card has one, else every file of the config. Files are
opened without pre-buffering and read in small record batches, so memory holds a few
rows' images whatever the size of a shard or of the dataset.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from nhr.errors import NhrError
from nhr.resolutions import Size, nearest, scaled

COLUMNS = ("triplet_id", "source_image", "edited_image", "instruction")
READ_ROWS = 8  # rows per record batch read from a shard


class TrainDataError(NhrError):
    """The training data cannot be found or read."""


@dataclass(frozen=True)
class Triplet:
    """One training example: the source, the instruction and the edited image."""

    key: str
    source: Image.Image
    edited: Image.Image
    instruction: str


def dataset_folder(data: str, run_dir: Path | str) -> Path:
    """The local export folder TRAIN_DATA names: a run folder (its ``dataset/``), an
    export folder, or a hub dataset id (downloaded into the Hugging Face cache);
    ``''`` is ``run_dir``'s own export."""
    where = Path(data or run_dir).expanduser()
    for folder in (where / "dataset", where):
        if (folder / "README.md").is_file() and (folder / "data").is_dir():
            return folder
    if data and not where.exists() and data.count("/") == 1 and not data.startswith((".", "~")):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(data, repo_type="dataset"))
    raise TrainDataError(
        f"no exported dataset at {where} (no dataset/README.md or README.md with data/)",
        "run the mining chain first (e.g. `nhr run configs/demo.yaml`), or set TRAIN_DATA "
        "to a run folder, an export folder or a hub dataset id",
    )


def read_card(folder: Path) -> dict[str, Any]:
    """The front matter of a dataset card (``{}`` when it has none)."""
    import yaml

    text = (folder / "README.md").read_text()
    if not text.startswith("---"):
        return {}
    return yaml.safe_load(text.split("---", 2)[1]) or {}


def split_files(folder: Path, split: str = "train", config: str = "default") -> list[Path]:
    """The parquet files of ``config``'s ``split`` (all of the config's files when the
    card names no such split), sorted."""
    configs = {c["config_name"]: c for c in read_card(folder).get("configs", [])}
    if config not in configs:
        raise TrainDataError(
            f"{folder}/README.md declares no {config!r} config",
            "point TRAIN_DATA at an nhr export (its card lists the configs)",
        )
    entries = configs[config].get("data_files", [])
    if isinstance(entries, str):
        entries = [{"split": "train", "path": entries}]
    chosen = [e for e in entries if e.get("split") == split] or entries
    files: list[Path] = []
    for entry in chosen:
        patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        for pattern in patterns:
            parent, glob = (folder / pattern).parent, Path(pattern).name
            files += [p for p in parent.glob("*.parquet") if fnmatch.fnmatch(p.name, glob)]
    return sorted(set(files))


def count_rows(files: Sequence[Path]) -> int:
    """Rows in ``files``, from their parquet footers (no data read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _image(cell: dict[str, Any] | None, key: str, column: str) -> Image.Image:
    """An embedded image cell (``{"bytes", "path"}``) as a loaded RGB image."""
    if not cell or not cell.get("bytes"):
        raise TrainDataError(
            f"triplet {key}: {column} has no embedded image bytes",
            "re-export the run (nhr exports embed every image)",
        )
    with Image.open(io.BytesIO(cell["bytes"])) as img:
        return img.convert("RGB")


def iter_rows(
    files: Sequence[Path], columns: Sequence[str], start: int = 0, stop: int | None = None
) -> Iterator[dict[str, Any]]:
    """Rows ``start`` to ``stop`` (row numbers across ``files`` in order) as dicts of
    ``columns``, read ``READ_ROWS`` at a time; files before ``start`` are skipped by
    their footers."""
    offset = 0
    for path in files:
        if stop is not None and offset >= stop:
            return
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        n = pf.metadata.num_rows
        if offset + n <= start:
            offset += n
            continue
        for batch in pf.iter_batches(batch_size=READ_ROWS, columns=list(columns)):
            cols = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                row = offset + i
                if row < start:
                    continue
                if stop is not None and row >= stop:
                    return
                yield {c: cols[c][i] for c in columns}
            offset += batch.num_rows
            del cols, batch


def iter_triplets(
    files: Sequence[Path], start: int = 0, stop: int | None = None
) -> Iterator[Triplet]:
    """Triplets ``start`` to ``stop`` of ``files`` (see ``iter_rows``), images decoded."""
    for row in iter_rows(files, COLUMNS, start, stop):
        key = row["triplet_id"]
        yield Triplet(
            key=key,
            source=_image(row["source_image"], key, "source_image"),
            edited=_image(row["edited_image"], key, "edited_image"),
            instruction=row["instruction"],
        )


def bucket_size(size: Size, buckets: Sequence[Size], area: int, multiple: int) -> Size:
    """The (w, h) a triplet of ``size`` trains at: its nearest bucket in aspect, scaled
    to about ``area`` pixels, sides multiples of ``multiple``."""
    return scaled(nearest(size, buckets), area, multiple)


def fit_crop(image: Image.Image, size: Size) -> Image.Image:
    """``image`` resized to cover ``size`` (w, h) and centre-cropped to it."""
    w, h = size
    s = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * s)), max(h, round(image.height * s))
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - w) // 2, (rh - h) // 2
    return image.crop((left, top, left + w, top + h))


def to_tensor(images: Sequence[Image.Image], size: Size) -> Any:
    """Images at ``size`` as a float tensor (N, 3, h, w) in [-1, 1] (the VAEs' range)."""
    import torch

    arr = np.stack([np.asarray(fit_crop(im, size), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0
