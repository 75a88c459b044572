"""Photos as sources (``SOURCES: photos``): the stages that replace prompts and renders.

UltraEdit, ImgEdit, X2Edit and Pico-Banana start from photos. Here a photo collection
(``nhr.photo_collections``) takes the place of the text-to-image model:

1. ``PhotoStage`` (table ``photos``): each photo goes through the one loader
   (``nhr.images``; a photo it refuses is a row with ``passed`` False and the refusal as
   ``reason``, counted by the runner like any drop), is downscaled to ``LONG_SIDE_MAX``,
   stored as a blob, and described by the captioner (a VLM).
2. ``CaptionInstructionStage`` (table ``prompts``): the instruction writer writes k
   instructions from each caption; the caption stands where the T2I prompt stood.
3. ``PhotoSourceStage`` (table ``sources``): one source per photo, its ``prompt`` the
   caption, so the gate, the editor, the validator and inversion run unchanged.
"""

from __future__ import annotations

import random
from typing import Any

from nhr.backends.base import Captioner, CaptionInstructionWriter, CaptionRequest
from nhr.images import ImageLimits, ImageRefused, fit_long_side, open_image
from nhr.photo_collections import PhotoCollection
from nhr.records import PhotoJob, PhotoRow, PromptRow, SourceRow
from nhr.seeds import derive_seed
from nhr.stages.base import Stage
from nhr.store import BlobStore


def plan_photo_jobs(collection: PhotoCollection, max_photos: int, seed: int) -> list[PhotoJob]:
    """The photos to read: all of them, or ``max_photos`` drawn uniformly at random (seeded,
    without replacement) and kept in collection order. Ids follow the collection index."""
    indices = range(len(collection))
    if max_photos and max_photos < len(collection):
        indices = sorted(random.Random(derive_seed(seed, "photos")).sample(indices, max_photos))
    return [PhotoJob(f"ph{i:07d}", i, collection.name(i)) for i in indices]


class PhotoStage(Stage[PhotoJob, PhotoRow]):
    """Reads each photo through the one loader, stores it, and captions it."""

    name = "photos"
    input_type = PhotoJob
    output_type = PhotoRow
    backend_fields = ("captioner",)

    def __init__(
        self,
        collection: PhotoCollection,
        captioner: Captioner,
        blobs: BlobStore,
        limits: ImageLimits,
        long_side_max: int,
    ) -> None:
        self.collection = collection
        self.captioner = captioner
        self.blobs = blobs
        self.limits = limits
        self.long_side_max = long_side_max

    def own_settings(self) -> dict[str, Any]:
        return {
            "photos": self.collection.location,
            "kind": self.collection.kind,
            "limits": [
                self.limits.max_pixels,
                self.limits.min_side,
                self.limits.max_aspect,
                list(self.limits.background),
            ],
            "long_side_max": self.long_side_max,
            "captioner": self.captioner.model_id,
            "caption_version": self.captioner.version,
        }

    def _row(self, job: PhotoJob, **values: Any) -> PhotoRow:
        base = {
            "image": "",
            "width": 0,
            "height": 0,
            "caption": "",
            "style": "",
            "topic": "",
            "captioner_id": self.captioner.model_id,
            "captioner_version": self.captioner.version,
            "passed": True,
            "reason": "",
        }
        return PhotoRow(
            photo_id=job.photo_id,
            index=job.index,
            location=job.location,
            **{
                **base,
                **values,
            },
        )

    def process_batch(self, rows: list[PhotoJob]) -> list[PhotoRow]:
        """Load every photo (refusals become rows with their reason), caption the rest in
        one captioner call."""
        loaded, out = [], {}
        for job in rows:
            raw = self.collection.raw(job.index)
            try:
                if raw is None:
                    raise ImageRefused("missing", f"photo {job.location}: no image", "")
                image = open_image(raw, self.limits, f"photo {job.location}")
            except ImageRefused as err:
                out[job.photo_id] = self._row(job, passed=False, reason=f"image_{err.reason}")
                continue
            loaded.append((job, fit_long_side(image, self.long_side_max)))
        captions = self.captioner.caption([im for _, im in loaded]) if loaded else []
        for (job, image), cap in zip(loaded, captions, strict=True):
            if cap.error is not None or not cap.text.strip():
                kind = str(cap.error or "empty").split(":", 1)[0].strip().replace(" ", "_")
                out[job.photo_id] = self._row(job, passed=False, reason=f"caption_{kind}")
                continue
            out[job.photo_id] = self._row(
                job,
                image=self.blobs.put(image),
                width=image.width,
                height=image.height,
                caption=cap.text.strip(),
                style=cap.style,
                topic=cap.topic,
            )
        return [out[job.photo_id] for job in rows]


class CaptionInstructionStage(Stage[PhotoRow, PromptRow]):
    """Writes k instructions per captioned photo; the caption becomes the prompt text.
    A photo the writer fails gets a prompt row with no instructions (no edits planned)."""

    name = "prompts"
    input_type = PhotoRow
    output_type = PromptRow
    backend_fields = ("writer",)

    def __init__(self, writer: CaptionInstructionWriter, k: int, seed: int) -> None:
        self.writer = writer
        self.k = k
        self.seed = seed

    def own_settings(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "writer": self.writer.model_id,
            "version": self.writer.version,
            "seed": self.seed,
            "from": "captions",
        }

    def process_batch(self, rows: list[PhotoRow]) -> list[PromptRow]:
        """Ask the writer once for the whole batch, keeping instructions in written order."""
        seeds = [derive_seed(self.seed, "photo-prompt", r.photo_id) for r in rows]
        requests = [
            CaptionRequest(r.photo_id, s, self.k, r.caption)
            for r, s in zip(rows, seeds, strict=True)
        ]
        sets = self.writer.instructions(requests)
        out = []
        for row, seed, got in zip(rows, seeds, sets, strict=True):
            drafts = () if got.error else got.instructions
            out.append(
                PromptRow(
                    prompt_id=row.photo_id,
                    seed=seed,
                    text=row.caption,
                    style=row.style,
                    topic=row.topic,
                    instructions=tuple(d.text for d in drafts),
                    edit_types=tuple(d.edit_type for d in drafts),
                    prompter_id=self.writer.model_id,
                    prompter_version=self.writer.version,
                )
            )
        return out


class PhotoSourceStage(Stage[PromptRow, SourceRow]):
    """One source per photo with instructions: the stored photo, its caption as prompt."""

    name = "sources"
    input_type = PromptRow
    output_type = SourceRow

    def __init__(self, photos: dict[str, PhotoRow], collection: str) -> None:
        self.photos = photos
        self.collection = collection

    def own_settings(self) -> dict[str, Any]:
        return {"photos": self.collection, "n_seeds": 1}

    def process_batch(self, rows: list[PromptRow]) -> list[SourceRow]:
        """Each prompt's photo as a source row (provenance: the collection and entry)."""
        out = []
        for prompt in rows:
            photo = self.photos[prompt.prompt_id]
            out.append(
                SourceRow(
                    source_id=f"{prompt.prompt_id}-s0",
                    prompt_id=prompt.prompt_id,
                    prompt=prompt.text,
                    style=prompt.style,
                    seed=0,
                    width=photo.width,
                    height=photo.height,
                    image=photo.image,
                    model_id=f"photo:{photo.location}",
                    steps=0,
                    guidance=0.0,
                    seconds=0.0,
                )
            )
        return out
