"""Batched editor calls on a tiny diffusers pipeline: how full the calls get, and what
batching buys per image, side by side in one run (CPU, offline; about 3 minutes on an
idle 2-core machine).

A realistic job stream: sources at bucketed sizes (RESOLUTIONS paper within
``--aspect-max``, fitted to the demo's 128–256 px), the plan's seeded uniform order over
sources × instructions × seeds, a few step levels and guidance values. The stream goes
through ``edit_call_batches`` (the editor link's batcher, window EDIT_SCHEDULE_WINDOW)
into ``EditStage`` with a tiny FLUX Kontext (or InstructPix2Pix) pipeline that works at
Kontext's nearest trained resolution scaled to ``--area`` pixels. Each of the first full
calls is followed by its jobs one image per call (``--single-jobs`` in all), so both see
the same machine load. It prints one JSON object:

    mean_images_per_call        editor images / editor calls of the batched run
    max_batch                   DIFFUSERS_MAX_BATCH
    fixed_slices_images_per_call  the same stream cut into fixed slices of max_batch in
                                arrival order (what a call gets without the batcher)
    batched_seconds_per_image   pipeline seconds per image, batched (every call)
    single_seconds_per_image    pipeline seconds per image, one image per call
    paired_batched_seconds_per_image  the batched calls those single calls repeat
    batched_speedup             single / paired batched seconds per image
    target_met                  mean_images_per_call >= 0.9 × max_batch

    python scripts/bench_batching.py [--editor pix2pix] [--max-batch 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nhr.backends.diffusers_kontext import KontextEditor  # noqa: E402
from nhr.backends.diffusers_pix2pix import Pix2PixEditor  # noqa: E402
from nhr.backends.diffusers_runtime import DiffusersOptions  # noqa: E402
from nhr.backends.tiny_diffusers import write_tiny_models  # noqa: E402
from nhr.records import EditJob, from_table  # noqa: E402
from nhr.resolutions import PAPER_RESOLUTIONS, fit_long_side  # noqa: E402
from nhr.seeds import rng_for  # noqa: E402
from nhr.stages.edits import (  # noqa: E402
    SCHEDULE_WINDOW,
    EditStage,
    call_batcher,
    call_key,
    plan_edit_jobs,
)
from nhr.store import BlobStore  # noqa: E402


def job_stream(blobs: BlobStore, args: argparse.Namespace) -> list[EditJob]:
    """The plan's jobs over ``args.sources`` noise sources at bucketed sizes."""
    buckets = fit_long_side(PAPER_RESOLUTIONS, 128, 256, args.aspect_max, 16)
    n, k = args.sources, args.instructions
    sizes = [buckets[int(rng_for(0, "size", i).integers(len(buckets)))] for i in range(n)]
    images = [
        blobs.put(Image.effect_noise(s, 40 + i % 30).convert("RGB")) for i, s in enumerate(sizes)
    ]
    sources = pa.table(
        {
            "source_id": [f"s{i:04d}" for i in range(n)],
            "prompt_id": [f"p{i:04d}" for i in range(n)],
            "style": ["photo"] * n,
            "image": images,
            "width": [w for w, _ in sizes],
            "height": [h for _, h in sizes],
        }
    )
    prompts = pa.table(
        {
            "prompt_id": [f"p{i:04d}" for i in range(n)],
            "instructions": [[f"make the thing {j} red" for j in range(k)] for _ in range(n)],
            "edit_types": [["recolor"] * k for _ in range(n)],
        }
    )
    plan = plan_edit_jobs(
        sources,
        prompts,
        args.seeds,
        (args.steps_min, args.steps_max),
        tuple(args.guidance),
        0,
        steps_levels=args.steps_levels,
    )
    return [job for table in plan for job in from_table(table, EditJob)]


def build_editor(args: argparse.Namespace, models: dict[str, Path]) -> Any:
    """The tiny editor, on the CPU, at most ``max_batch`` images a pipeline call."""
    options = DiffusersOptions(device="cpu", dtype="float32", max_batch=args.max_batch)
    if args.editor == "kontext":
        return KontextEditor(str(models["flux-kontext"]), options, max_area=args.area)
    return Pix2PixEditor(
        str(models["instruct-pix2pix"]),
        options,
        max_area=args.area,
        buckets=PAPER_RESOLUTIONS,
    )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the batched stream and the one-image-per-call sample; the figures."""
    folder = Path(args.models or tempfile.mkdtemp(prefix="nhr-tiny-"))
    models = write_tiny_models(folder)
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(Path(tmp))
        jobs = job_stream(blobs, args)
        editor = build_editor(args, models)
        stage = EditStage(editor, blobs)
        stage.setup()
        batcher = call_batcher(editor, args.window)
        max_batch = stage.max_batch or args.max_batch
        keys = len({call_key(j, stage.buckets) for j in jobs})
        fixed = [jobs[i : i + max_batch] for i in range(0, len(jobs), max_batch)]
        fixed_calls = sum(len({call_key(j, stage.buckets) for j in b}) for b in fixed)
        stage.process_batch(jobs[:max_batch])  # the first calls pay one-off costs
        stage.process_batch(jobs[:1])
        batched = {"calls": 0.0, "images": 0.0, "device": 0.0, "pipeline_calls": 0.0}
        single = {"images": 0, "device": 0.0, "paired_batched": 0.0}
        t0 = time.perf_counter()
        for batch in batcher(jobs, max_batch):
            before = stage.usage()
            stage.process_batch(batch)
            now = stage.usage()
            batched["calls"] += now["editor_calls"] - before["editor_calls"]
            batched["images"] += now["editor_images"] - before["editor_images"]
            batched["pipeline_calls"] += now["calls"] - before["calls"]
            batched["device"] += now["device_seconds"] - before["device_seconds"]
            if len(batch) == max_batch and single["images"] < args.single_jobs:
                # the same jobs one per call, right after: both see the same machine load
                for job in batch:
                    stage.process_batch([job])
                single["images"] += len(batch)
                single["paired_batched"] += now["device_seconds"] - before["device_seconds"]
                single["device"] += stage.usage()["device_seconds"] - now["device_seconds"]
        wall = time.perf_counter() - t0
    mean = batched["images"] / batched["calls"]
    batched_spi = batched["device"] / batched["images"]
    paired = max(1, single["images"])
    single_spi, paired_spi = single["device"] / paired, single["paired_batched"] / paired
    return {
        "editor": args.editor,
        "area": args.area,
        "max_batch": max_batch,
        "window": args.window,
        "jobs": len(jobs),
        "keys": keys,
        "editor_calls": int(batched["calls"]),
        "pipeline_calls": int(batched["pipeline_calls"]),
        "mean_images_per_call": round(mean, 3),
        "fixed_slices_images_per_call": round(len(jobs) / fixed_calls, 3),
        "batched_seconds_per_image": round(batched_spi, 5),
        "single_seconds_per_image": round(single_spi, 5),
        "paired_batched_seconds_per_image": round(paired_spi, 5),
        "batched_speedup": round(single_spi / paired_spi, 2),
        "single_jobs": single["images"],
        "wall_seconds": round(wall, 1),
        "target_met": mean >= 0.9 * max_batch,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--editor", choices=("kontext", "pix2pix"), default="kontext")
    p.add_argument("--max-batch", type=int, default=8, help="DIFFUSERS_MAX_BATCH")
    p.add_argument("--window", type=int, default=SCHEDULE_WINDOW, help="EDIT_SCHEDULE_WINDOW")
    p.add_argument("--sources", type=int, default=56)
    p.add_argument("--aspect-max", type=float, default=2.0, help="ASPECT_MAX of the sources")
    p.add_argument("--instructions", type=int, default=4, help="K")
    p.add_argument("--seeds", type=int, default=4, help="M")
    p.add_argument("--steps-min", type=int, default=2)
    p.add_argument("--steps-max", type=int, default=3)
    p.add_argument("--steps-levels", type=int, default=2, help="EDIT_STEPS_LEVELS")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.5])
    p.add_argument("--area", type=int, default=48 * 48, help="EDIT_MAX_AREA of the tiny editor")
    p.add_argument("--single-jobs", type=int, default=48, help="jobs also run one per call")
    p.add_argument("--models", default="", help="tiny models folder (default: a temp one)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    figures = bench(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
