"""Latents and text embeddings of every training triplet, computed once and kept in the
training folder, so training (and a resumed run) never runs the VAE or the text
encoders again.

The cache is parts of ``PART_ROWS`` consecutive rows of the split (part ``i`` holds rows
``i·PART_ROWS`` onwards): ``part-00000.safetensors`` with the tensors of each item
under ``<item>.<name>``, then ``part-00000.json`` with the items' keys and buckets,
each written to a temp file and renamed (the JSON last, so a part with its JSON is
whole). A rerun skips the whole parts and reads on from the first missing row;
``complete.json`` marks the cache finished and records what it was made from
(``fingerprint``): a cache made from other data or settings is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.errors import RunFolderError
from nhr.resolutions import Size
from nhr.train.data import Triplet, iter_triplets, to_tensor

PART_ROWS = 64  # rows of the split per cache part
ENCODE_ROWS = 8  # triplets encoded in one call (same bucket)


@dataclass(frozen=True)
class CacheItem:
    """Where one triplet's tensors are: its part, its name there, its bucket."""

    part: int
    name: str
    key: str
    bucket: Size


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class LatentCache:
    """The cache in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._open: dict[int, Any] = {}
        self._items: list[CacheItem] | None = None

    def done(self) -> dict[str, Any] | None:
        """What ``complete.json`` records, or None while the cache is unfinished."""
        path = self.folder / "complete.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a cache (whole or partial) made from other data or settings."""
        path = self.folder / "fingerprint.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved != fingerprint:
                changed = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
                raise RunFolderError(
                    f"the latent cache in {self.folder} was made from other data or "
                    f"settings ({', '.join(changed)})",
                    "train in a new run folder, or delete that cache folder to rebuild it",
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, json.dumps(fingerprint, sort_keys=True).encode())

    def _parts_done(self) -> int:
        """Whole parts at the start of the cache."""
        n = 0
        while (self.folder / f"part-{n:05d}.json").is_file():
            n += 1
        return n

    def build(
        self,
        files: Sequence[Path],
        rows: int,
        bucket_of: Callable[[Size], Size],
        encode: Callable[[Any, Any, list[str]], dict[str, Any]],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Encode rows ``0..rows`` of ``files`` part by part (resuming after the last
        whole part); ``encode(sources, edited, instructions)`` takes same-size image
        tensors and returns named batched tensors. Returns the rows encoded now."""
        from safetensors.torch import save_file

        if self.done() is not None:
            return 0
        start_part = self._parts_done()
        if progress is not None:
            progress(min(rows, start_part * PART_ROWS))
        encoded = 0
        stream = iter_triplets(files, start=start_part * PART_ROWS, stop=rows)
        part = start_part
        while part * PART_ROWS < rows:
            chunk = [t for _, t in zip(range(PART_ROWS), stream, strict=False)]
            if not chunk:
                break
            tensors, items = self._encode_part(chunk, bucket_of, encode)
            save_file(tensors, str(self.folder / f".part-{part:05d}.safetensors.tmp"))
            os.replace(
                self.folder / f".part-{part:05d}.safetensors.tmp",
                self.folder / f"part-{part:05d}.safetensors",
            )
            _write_atomic(self.folder / f"part-{part:05d}.json", json.dumps(items).encode())
            encoded += len(chunk)
            if progress is not None:
                progress(len(chunk))
            part += 1
            del tensors, chunk
        _write_atomic(
            self.folder / "complete.json", json.dumps({"rows": rows, "parts": part}).encode()
        )
        return encoded

    @staticmethod
    def _encode_part(
        chunk: list[Triplet],
        bucket_of: Callable[[Size], Size],
        encode: Callable[[Any, Any, list[str]], dict[str, Any]],
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The tensors (``<i>.<name>``) and item records of one part."""
        groups: dict[Size, list[int]] = {}
        for i, t in enumerate(chunk):
            groups.setdefault(bucket_of(t.source.size), []).append(i)
        tensors: dict[str, Any] = {}
        items: list[dict[str, Any]] = [{} for _ in chunk]
        for size, idx in groups.items():
            for at in range(0, len(idx), ENCODE_ROWS):
                sub = idx[at : at + ENCODE_ROWS]
                out = encode(
                    to_tensor([chunk[i].source for i in sub], size),
                    to_tensor([chunk[i].edited for i in sub], size),
                    [chunk[i].instruction for i in sub],
                )
                for j, i in enumerate(sub):
                    for name, value in out.items():
                        tensors[f"{i}.{name}"] = value[j].detach().cpu().contiguous()
                    items[i] = {"name": str(i), "key": chunk[i].key, "bucket": list(size)}
        return tensors, items

    def items(self) -> list[CacheItem]:
        """Every cached item in row order (read from the parts' JSON)."""
        if self._items is None:
            out = []
            for part in range(self._parts_done()):
                for rec in json.loads((self.folder / f"part-{part:05d}.json").read_text()):
                    out.append(CacheItem(part, rec["name"], rec["key"], tuple(rec["bucket"])))
            self._items = out
        return self._items

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The cached tensors of ``indices`` (same bucket), stacked per name."""
        import torch
        from safetensors import safe_open

        items = self.items()
        rows: list[dict[str, Any]] = []
        for i in indices:
            item = items[i]
            handle = self._open.get(item.part)
            if handle is None:
                if len(self._open) >= 8:
                    self._open.pop(next(iter(self._open)))
                path = str(self.folder / f"part-{item.part:05d}.safetensors")
                handle = self._open[item.part] = safe_open(path, framework="pt")
            prefix = f"{item.name}."
            rows.append(
                {
                    k[len(prefix) :]: handle.get_tensor(k)
                    for k in handle.keys()
                    if k.startswith(prefix)
                }
            )
        return {name: torch.stack([r[name] for r in rows]) for name in rows[0]}

    def __iter__(self) -> Iterator[CacheItem]:
        return iter(self.items())
