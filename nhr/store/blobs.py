"""Atomic file writes and content-addressed image blobs (``blobs/ab/<sha256>.png``).

Every write goes to a temp file in the same folder and is renamed into place, so a
killed process leaves either the old state or the new one, never half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from nhr.errors import ImageError
from nhr.images import ImageLimits, ImageRefused, open_image

MAX_IMAGE_PIXELS = 4096 * 4096


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


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image fully as RGB through the one loader (``nhr.images``), refusing
    unreadable or over-large files with a clear error."""
    if not path.is_file():
        raise ImageError(f"image {path} is missing", "rerun the stage that wrote it")
    try:
        return open_image(path, ImageLimits(max_pixels=max_pixels), where=f"image {path}")
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


class BlobStore:
    """Images stored once each, by the sha256 of their PNG bytes, under ``root/blobs``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, image: Image.Image) -> str:
        """Store an image; returns its path relative to the run folder."""
        data = encode_png(image.convert("RGB"))
        digest = hashlib.sha256(data).hexdigest()
        rel = f"blobs/{digest[:2]}/{digest}.png"
        path = self.root / rel
        if not path.exists():
            atomic_write_bytes(path, data)
        return rel

    def get(self, rel: str) -> Image.Image:
        """Load a stored image as RGB; a damaged blob's error names the repair command."""
        try:
            return load_image(self.root / rel)
        except ImageError as err:
            raise ImageError(
                err.problem,
                f"run `nhr repair {self.root}` (it deletes the image and the rows that made "
                "it), then rerun: the same image is made again",
            ) from None

    def read_bytes(self, rel: str) -> bytes:
        """The PNG bytes of a stored image."""
        return (self.root / rel).read_bytes()
