"""Atomic file writes and content-addressed image blobs (``blobs/ab/<sha256>.png``).

Every write is whole: on a local path a temp file in the same folder renamed into place,
on an object store one PUT (see ``nhr.store.files``), so a killed process leaves either
the old state or the new one, never half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image

from nhr.errors import ImageError
from nhr.images import ImageLimits, ImageRefused, as_rgb, open_image
from nhr.store.files import Files, LocalFiles, open_files

MAX_IMAGE_PIXELS = 4096 * 4096
WRITTEN_MEMO = 4096  # images whose blob names ``BlobStore.put`` remembers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, deterministic for the same pixels."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_image(
    path: Path | str, max_pixels: int = MAX_IMAGE_PIXELS, data: bytes | None = None
) -> Image.Image:
    """Open an image fully as RGB through the one loader (``nhr.images``), refusing
    unreadable or over-large files with a clear error (``data``: its bytes, already read
    from an object store; ``path`` then only names it)."""
    if data is None and not Path(path).is_file():
        raise ImageError(f"image {path} is missing", "rerun the stage that wrote it")
    try:
        source = Path(path) if data is None else data
        return open_image(source, ImageLimits(max_pixels=max_pixels), where=f"image {path}")
    except ImageRefused as err:
        if err.reason == "too_many_pixels":
            raise ImageError(
                f"image {path} is over {max_pixels} pixels ({err.problem})",
                "downscale it, or raise the limit if you trust the file",
            ) from None
        raise ImageError(
            f"image {path} cannot be read ({err.reason}: {err.problem})",
            "delete it and rerun the stage that wrote it, or replace the file",
        ) from None


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A thread-safe least-recently-used map whose values weigh at most ``limit`` in all
    (``weigh`` gives a value's weight; one heavier than the limit is not kept)."""

    def __init__(self, limit: int, weigh: Callable[[V], int]) -> None:
        self.limit = limit
        self.weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` unless a value is kept there already; returns the
        kept one, evicting the least recently used beyond the limit."""
        weight = self.weigh(value)
        if weight > self.limit:
            return value
        with self._lock:
            kept = self._items.get(key)
            if kept is not None:
                return kept
            self._items[key] = value
            self._weight += weight
            while self._weight > self.limit:
                _, old = self._items.popitem(last=False)
                self._weight -= self.weigh(old)
            return value


class BlobStore:
    """Images stored once each, by the sha256 of their PNG bytes, under ``root/blobs``
    (``root`` a path, a URL or a ``Files``).

    Decoded images are kept in a small LRU cache (at most ``cache_pixels`` pixels in
    all; read bytes, at most as many bytes): a blob's name is its content, so a cached
    image can never be stale, and a source image read by every job and judge of its k×M
    grid is decoded once. The cache
    stays in its process (it is not pickled to worker processes: a store pickles as its
    location, so a worker on another node opens the same objects).

    ``put`` remembers the names of the last ``WRITTEN_MEMO`` images it stored, by a
    digest of their pixels: an image whose pixels it stored already (an editor that
    changed nothing, a picture made twice) is neither PNG-encoded nor written again."""

    def __init__(self, root: Path | str | Files, cache_pixels: int = 64 * 2**20) -> None:
        self.files = open_files(root)
        self.root = self.files.local_path() or self.files.url
        self.cache_pixels = cache_pixels
        self._images: BoundedCache[str, Image.Image] = BoundedCache(
            cache_pixels, lambda image: image.width * image.height
        )
        self._bytes: BoundedCache[str, bytes] = BoundedCache(cache_pixels, len)
        # blob names by (size, digest of the pixels) of the images ``put`` stored
        self._written: BoundedCache[tuple[tuple[int, int], bytes], str] = BoundedCache(
            WRITTEN_MEMO, lambda _: 1
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "cache_pixels": self.cache_pixels}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["files"], state["cache_pixels"])  # type: ignore[misc]

    def put(self, image: Image.Image) -> str:
        """Store an image; returns its path relative to the run folder."""
        rgb = as_rgb(image)
        # the PNG bytes are a function of the pixels: a digest of those names them
        pixels = (rgb.size, hashlib.blake2b(rgb.tobytes(), digest_size=16).digest())
        rel = self._written.get(pixels)
        if rel is not None:
            return rel
        data = encode_png(rgb)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"blobs/{digest[:2]}/{digest}.png"
        if isinstance(self.files, LocalFiles):
            path = self.files.path(rel)
            if not os.path.exists(path):
                atomic_write_bytes(path, data)
        else:
            # the name is the content, so writing it again changes nothing: one PUT is
            # cheaper than a HEAD to ask first (most blobs are new)
            self.files.write_bytes(rel, data)
        return self._written.put(pixels, rel)

    def load(self, rel: str) -> Image.Image:
        """Decode a stored image (no cache), refusing a damaged one (``ImageError``)."""
        if isinstance(self.files, LocalFiles):
            return load_image(self.files.path(rel))
        try:
            data = self.files.read_bytes(rel)
        except FileNotFoundError:
            raise ImageError(
                f"image {self.files.describe(rel)} is missing", "rerun the stage that wrote it"
            ) from None
        return load_image(self.files.describe(rel), data=data)

    def get(self, rel: str) -> Image.Image:
        """Load a stored image as RGB (a copy the caller may change); a damaged blob's
        error names the repair command."""
        return self.view(rel).copy()

    def view(self, rel: str) -> Image.Image:
        """A stored image as RGB, shared with the cache and with every other caller of
        ``view``: for code that only reads its pixels (a judge, a check), which then
        pays no copy. Never change it; ``get`` gives a copy to change. A damaged blob's
        error names the repair command."""
        hit = self._images.get(rel)
        if hit is not None:
            return hit
        try:
            image = self.load(rel)
        except ImageError as err:
            raise ImageError(
                err.problem,
                f"run `nhr repair {self.files.describe()}` (it deletes the image and the rows "
                "that made it), then rerun: the same image is made again",
            ) from None
        return self._images.put(rel, image)

    def read_bytes(self, rel: str) -> bytes:
        """The PNG bytes of a stored image, the last ``cache_pixels`` bytes' worth kept
        (an export reads a source once per triplet made from it, and once more for its
        WebDataset shards)."""
        data = self._bytes.get(rel)
        if data is None:
            data = self._bytes.put(rel, self.files.read_bytes(rel))
        return data
