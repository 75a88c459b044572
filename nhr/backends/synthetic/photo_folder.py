"""Synthetic-world pictures written as a folder of PNG photos.

A stand-in for a photo collection: the renderer draws scenes the prompter writes and
records them in the world's truth (so the synthetic editor can edit them and the audit
can check the triplets made from them), and the files are plain PNGs, read back through
the photo-source path like any other photos. Rendering is deterministic, so writing the
folder again gives the same files and records the same truth in another run's world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nhr.backends.base import PromptRequest
from nhr.seeds import derive_seed


def write_photo_folder(
    world: Any, folder: Path, n: int, seed: int, long_side: tuple[int, int]
) -> Path:
    """Render ``n`` pictures (long side in ``long_side``, aspect up to 3:2, sizes a
    multiple of 8) into ``folder/world_NNNNNN.png``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(derive_seed("photo-folder", seed))
    requests = [PromptRequest(f"photo{i:06d}", int(rng.integers(2**31)), 0) for i in range(n)]
    drafts = world.prompter.write(requests)
    sizes = []
    for _ in range(n):
        long = int(rng.integers(long_side[0] // 8, long_side[1] // 8 + 1)) * 8
        short = max(8, int(long / rng.uniform(1.0, 1.5)) // 8 * 8)
        sizes.append((long, short) if rng.random() < 0.5 else (short, long))
    seeds = [int(s) for s in rng.integers(0, 2**31, n)]
    images = world.renderer.generate([d.text for d in drafts], seeds, sizes, 1, 0.0)
    for i, image in enumerate(images):
        path = folder / f"world_{i:06d}.png"
        if not path.is_file():
            image.save(path, format="PNG")
    return folder
