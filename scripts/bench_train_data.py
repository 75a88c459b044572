"""Peak memory of the training data reader (``nhr.train.data.iter_triplets``) over an
export of N rows and of 10×N rows in shards of the same size: streaming means the peak
does not grow with the dataset. pyarrow's reader holds one row group at a time, and an
export writes one row group per shard, so the peak is about one shard's bytes
(EXPORT_SHARD_ROWS bounds it). Each read runs in a fresh process; the figure is its
peak resident memory above what the process held before reading (sampled after every
row), beside the same for reading every shard into memory at once (the contrast).
Prints JSON.

    python scripts/bench_train_data.py [--rows 100] [--side 256] [--shard-rows 100]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from nhr.train.data import iter_triplets, split_files

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

files = split_files(Path(sys.argv[1]))
base = peak = rss()
t0, n = time.perf_counter(), 0
if sys.argv[2] == "stream":
    for t in iter_triplets(files):
        n += t.source.width > 0
        peak = max(peak, rss())
else:  # the contrast: every row in memory at once
    tables = [pq.read_table(f) for f in files]
    n = sum(t.num_rows for t in tables)
    peak = max(peak, rss())
print(n, peak - base, time.perf_counter() - t0)
"""


def write_noise_export(folder: Path, rows: int, side: int, shard_rows: int) -> int:
    """An export of ``rows`` triplets of incompressible noise images; returns its bytes."""
    sys.path.insert(0, str(ROOT))
    from nhr.stages.dataset_card import write_card
    from nhr.stages.export import triplet_features

    schema = triplet_features().arrow_schema
    (folder / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    size = 0
    for s, lo in enumerate(range(0, rows, shard_rows)):
        n = min(rows, lo + shard_rows) - lo
        cols: dict[str, list] = {name: [None] * n for name in schema.names}
        for j in range(n):
            for c in ("source_image", "edited_image"):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(
                    buf, format="PNG", compress_level=0
                )
                cols[c][j] = {"bytes": buf.getvalue(), "path": None}
            cols["triplet_id"][j] = f"t{lo + j:07d}"
            cols["instruction"][j] = "make it red"
            cols["parents"][j] = []
        path = folder / "data" / f"train-x-{s:05d}.parquet"
        pq.write_table(pa.Table.from_pydict(cols, schema=schema), path)
        size += path.stat().st_size
    write_card(folder, {"default": ("data/train-x-*.parquet", rows)}, rows, "bench\n")
    return size


def measure(folder: Path, mode: str = "stream") -> dict[str, float]:
    """Rows read, peak RSS above the start (MB) and seconds of one read (``stream``: the trainer's
    reader; ``whole``: every shard read into memory), in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    return {"rows": int(out[0]), "peak_mb": float(out[1]), "seconds": float(out[2])}


def bench(rows: int, side: int, shard_rows: int) -> dict[str, object]:
    """The reader over N and 10×N rows (see the module docstring)."""
    result: dict[str, object] = {"side": side, "shard_rows": shard_rows}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("n", rows), ("10n", 10 * rows)):
            folder = Path(tmp) / label
            size = write_noise_export(folder, n, side, shard_rows)
            result[label] = {
                "export_mb": size / 2**20,
                "stream": measure(folder, "stream"),
                "whole": measure(folder, "whole"),
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--shard-rows", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(bench(args.rows, args.side, args.shard_rows), indent=2))


if __name__ == "__main__":
    main()
