"""Bad and odd image files, each with the loader's expected outcome.

``write_zoo(folder)`` writes them and returns ``{name: Case}``; a case's ``expect`` is
``"ok"`` (loaded, and ``check`` holds on the RGB result) or a refusal reason of
``nhr.images``. The limits they are judged by are ``ZOO_LIMITS``.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nhr.images import ImageLimits

ZOO_LIMITS = ImageLimits(max_pixels=4096 * 4096, min_side=32, max_aspect=8.0)


@dataclass(frozen=True)
class Case:
    """One zoo file: its name on disk, the expected outcome, and a check of the result."""

    file: str
    expect: str
    check: Callable[[Image.Image], bool] | None = None


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares ``width``×``height`` (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bytes(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _mean(img: Image.Image) -> float:
    return float(np.asarray(img, dtype=np.float64).mean())


def _pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in img.getpixel(xy))


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def write_zoo(folder: Path) -> dict[str, Case]:
    """Write every zoo file into ``folder``; returns the cases by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    cases: dict[str, Case] = {}

    def add(name: str, file: str, data: bytes, expect: str, check: Callable | None = None) -> None:
        files[file] = data
        cases[name] = Case(file, expect, check)

    add("zero_byte", "zero.png", b"", "empty")
    png = _bytes(_noise(96, 96), "PNG")
    add("truncated_png", "truncated.png", png[: len(png) // 2], "truncated")
    jpg = _bytes(_noise(96, 96, 1), "JPEG", quality=90)
    add("truncated_jpeg", "truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    add("text_as_jpg", "notes.jpg", b"this is a text file, not a photo\n" * 4, "not_an_image")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect/></svg>'
    add("svg", "drawing.svg", svg, "not_an_image")
    add("decompression_bomb", "bomb.png", bomb_png(), "too_many_pixels")
    add("one_pixel", "dot.png", _bytes(Image.new("RGB", (1, 1), "red"), "PNG"), "too_small")
    add(
        "extreme_aspect",
        "sliver.png",
        _bytes(Image.new("RGB", (2000, 40)), "PNG"),
        "extreme_aspect",
    )
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    add(
        "cmyk",
        "cmyk.jpg",
        _bytes(cmyk, "JPEG", quality=95),
        "ok",
        lambda im: _close(_pixel(im, (32, 32)), (255, 0, 0)),
    )
    ramp = (np.tile(np.linspace(0, 65535, 64), (64, 1))).astype(np.uint16)
    add(
        "grey_16bit",
        "grey16.png",
        _bytes(Image.fromarray(ramp), "PNG"),
        "ok",
        lambda im: 100 < _mean(im) < 155 and _pixel(im, (0, 0))[0] < 10,
    )
    rgba = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half fully transparent
    add(
        "rgba",
        "alpha.png",
        _bytes(rgba, "PNG"),
        "ok",
        lambda im: _pixel(im, (5, 5)) == (255, 255, 255) and _pixel(im, (50, 5)) == (0, 0, 255),
    )
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(0, (0, 0, 16, 64))
    add(
        "palette",
        "palette.png",
        _bytes(pal, "PNG", transparency=0),
        "ok",
        lambda im: _pixel(im, (3, 3)) == (255, 255, 255) and _pixel(im, (40, 3)) == (0, 200, 0),
    )
    onebit = Image.new("1", (64, 64), 0)
    onebit.paste(1, (32, 0, 64, 64))
    add(
        "one_bit",
        "onebit.png",
        _bytes(onebit, "PNG"),
        "ok",
        lambda im: _pixel(im, (5, 5)) == (0, 0, 0) and _pixel(im, (50, 5)) == (255, 255, 255),
    )
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    add(
        "animated_gif",
        "anim.gif",
        gif.getvalue(),
        "ok",
        lambda im: _close(_pixel(im, (10, 10)), (255, 0, 0), 10),
    )
    tall = Image.new("RGB", (96, 48), "green")
    tall.paste((255, 0, 0), (0, 0, 8, 8))  # a red mark top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    add(
        "exif_rotated",
        "camera.jpg",
        _bytes(tall, "JPEG", quality=95, exif=exif),
        "ok",
        lambda im: im.size == (48, 96) and _close(_pixel(im, (44, 3)), (255, 0, 0), 60),
    )
    add(
        "webp",
        "photo.webp",
        _bytes(_noise(64, 64, 2), "WEBP", lossless=True),
        "ok",
        lambda im: im.size == (64, 64),
    )
    fl = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    add(
        "float_tiff",
        "float.tif",
        _bytes(Image.fromarray(fl), "TIFF"),
        "ok",
        lambda im: _pixel(im, (63, 0))[0] == 255 and 100 < _mean(im) < 155,
    )
    add(
        "unicode_name",
        "фото_été_写真.png",
        _bytes(_noise(64, 48, 3), "PNG"),
        "ok",
        lambda im: im.size == (64, 48),
    )
    add(
        "wrong_extension",
        "really_a_png.jpg",
        _bytes(_noise(80, 64, 4), "PNG"),
        "ok",
        lambda im: im.size == (80, 64),
    )
    for file, data in files.items():
        (folder / file).write_bytes(data)
    return cases
