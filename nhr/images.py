"""The one image loader: every image that enters a run from outside goes through here.

Photo sources, evaluation datasets and the run's own blobs all open images with
:func:`open_image`, which returns an RGB image as a person would see the file:

- EXIF orientation applied (a camera photo is not judged sideways);
- 16-bit and 32-bit integer images scaled to 8 bits (not clipped to white); float images
  in [0, 1] scaled by 255, other float ranges stretched from their min to their max;
- CMYK, YCbCr, palette, 1-bit and grey converted; alpha (RGBA, LA, a palette's
  transparency) composited on a stated background colour;
- animated images (GIF, APNG, WebP) give their first frame;
- a pixel-count limit checked from the header before any pixel is decoded (so a
  decompression bomb costs nothing), a minimum side and a maximum aspect ratio.

An image that cannot be read or is refused raises :class:`ImageRefused`, a typed
``ImageError`` whose ``reason`` is a short stable word (``empty``, ``not_an_image``,
``truncated``, ``too_many_pixels``, ``too_small``, ``extreme_aspect``, ...). Callers that
must go on (a photo source stage, a dataset evaluation) catch it and count ``reason``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nhr.colours import parse_colour
from nhr.errors import ImageError

#: Refusal reasons, in the order a file is checked.
REASONS = (
    "missing",
    "empty",
    "not_an_image",
    "too_many_pixels",
    "truncated",
    "unreadable",
    "too_small",
    "extreme_aspect",
)


class ImageRefused(ImageError):
    """An image that cannot be read or is refused; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, problem: str, fix: str) -> None:
        self.reason = reason
        super().__init__(problem, fix)


@dataclass(frozen=True)
class ImageLimits:
    """What the loader accepts: at most ``max_pixels`` pixels, each side at least
    ``min_side``, long side / short side at most ``max_aspect`` (0: any), and the colour
    transparent pixels are composited on."""

    max_pixels: int = 4096 * 4096
    min_side: int = 1
    max_aspect: float = 0.0
    background: tuple[int, int, int] = (255, 255, 255)

    @classmethod
    def from_config(cls, cfg: Any) -> ImageLimits:
        """The limits a run config sets for images from outside (``IMAGE_*``)."""
        return cls(
            max_pixels=cfg.images.image_max_pixels,
            min_side=cfg.images.image_min_side,
            max_aspect=cfg.images.image_max_aspect,
            background=parse_colour(cfg.images.image_background),
        )


Source = Path | str | bytes | bytearray | BinaryIO | Image.Image


def _opened(source: Source, where: str) -> Image.Image:
    """``Image.open`` of a path, bytes or file object (header only, nothing decoded)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageRefused("missing", f"{where}: file {path} does not exist", "check the path")
        if path.stat().st_size == 0:
            raise ImageRefused("empty", f"{where}: file {path} is empty (0 bytes)", _REPLACE)
        return Image.open(path)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageRefused("empty", f"{where}: the image bytes are empty", _REPLACE)
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


_REPLACE = "replace or remove the file; the run skips it and counts it"


def open_image(
    source: Source, limits: ImageLimits | None = None, where: str = "image"
) -> Image.Image:
    """A fully decoded RGB image from a path, bytes, a file object or a PIL image.

    Raises :class:`ImageRefused` (with ``reason``) for anything it cannot read or
    refuses; ``where`` names the image in the message (a path, a dataset row).
    """
    limits = limits or ImageLimits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _opened(source, where)
            try:
                return _decode(img, limits, where)
            finally:
                if img is not source:
                    img.close()
    except ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ImageRefused(
            "not_an_image", f"{where}: not an image format the loader reads", _REPLACE
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRefused(
            "too_many_pixels", f"{where}: refused as a decompression bomb ({err})", _LIMIT
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = "truncated" if "truncat" in str(err).lower() else "unreadable"
        raise ImageRefused(
            reason, f"{where}: cannot be decoded ({type(err).__name__}: {err})", _REPLACE
        ) from None


_LIMIT = "downscale it, or raise IMAGE_MAX_PIXELS if you trust the file"


def _decode(img: Image.Image, limits: ImageLimits, where: str) -> Image.Image:
    """Check the header's size, decode the first frame, orient it and make it RGB."""
    w, h = img.size
    if w * h > limits.max_pixels:
        raise ImageRefused(
            "too_many_pixels",
            f"{where}: {w}x{h} is {w * h:,} pixels, over IMAGE_MAX_PIXELS={limits.max_pixels:,}",
            _LIMIT,
        )
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img) or img
    rgb = to_rgb(img, limits.background)
    w, h = rgb.size
    if min(w, h) < limits.min_side:
        raise ImageRefused(
            "too_small",
            f"{where}: {w}x{h} has a side under IMAGE_MIN_SIDE={limits.min_side}",
            "use a larger image, or lower IMAGE_MIN_SIDE",
        )
    if limits.max_aspect and max(w, h) / min(w, h) > limits.max_aspect:
        raise ImageRefused(
            "extreme_aspect",
            f"{where}: {w}x{h} is more elongated than IMAGE_MAX_ASPECT={limits.max_aspect:g}",
            "crop it, or raise IMAGE_MAX_ASPECT",
        )
    return rgb


def _scaled(arr: np.ndarray, mode: str) -> np.ndarray:
    """A one-channel integer or float array scaled to uint8."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.round(arr * 255.0).astype(np.uint8)
        span = hi - lo or 1.0
        return np.round((arr - lo) / span * 255.0).astype(np.uint8)
    arr = arr.astype(np.int64)
    if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
        lo, span = int(arr.min()), int(arr.max() - arr.min()) or 1
        return ((arr - lo) * 255 // span).astype(np.uint8)
    return ((arr * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An image of any PIL mode as 8-bit RGB, alpha composited on ``background``."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode.startswith("I") or mode == "F":
        grey = _scaled(np.asarray(img), "F" if mode == "F" else "I")
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def as_rgb(img: Image.Image) -> Image.Image:
    """``img`` itself when it is RGB already, else converted to RGB: for code that only
    reads the pixels (PIL's ``convert`` copies the image even to its own mode)."""
    return img if img.mode == "RGB" else img.convert("RGB")


def try_open(
    source: Source, limits: ImageLimits | None = None, where: str = "image"
) -> tuple[Image.Image | None, str | None]:
    """(image, None) or (None, reason): :func:`open_image` for loops that count skips."""
    try:
        return open_image(source, limits, where), None
    except ImageRefused as err:
        return None, err.reason


def fit_long_side(image: Image.Image, long_max: int) -> Image.Image:
    """``image`` downscaled (Lanczos) so its long side is at most ``long_max`` (0: as is)."""
    if not long_max or max(image.size) <= long_max:
        return image
    scale = long_max / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
