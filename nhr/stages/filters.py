"""Stages 5 and 6: the soft pre-filter (a judge) and the low-level pixel check.

The low-level check is the paper's, exactly: a pixel is changed where |Ie − I0| > 40
(the largest absolute difference over the RGB channels), changed pixels are grouped into
4-connected components, and a candidate is dropped when its largest component holds
less than 0.5 % of all changed pixels — the signature of scattered noise rather than
an edit. A candidate with no changed pixel at all is dropped as ``no_change``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from nhr.backends.base import Judge
from nhr.images import as_rgb
from nhr.records import CandidateRow, Verdict
from nhr.stages.base import Stage
from nhr.store import BlobStore

# the 4-connected neighbourhood (scipy.ndimage.generate_binary_structure(2, 1)), spelled
# out so that importing the stages does not import scipy
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


class PrefilterStage(Stage[CandidateRow, Verdict]):
    """Soft pre-filter: pass iff both scores >= ``min_score``, no unwanted modification,
    and the aesthetics answer is yes. A judge error is a fail."""

    name = "prefilter"
    input_type = CandidateRow
    output_type = Verdict
    backend_fields = ("judge",)

    def __init__(self, judge: Judge, blobs: BlobStore, min_score: float) -> None:
        self.judge = judge
        self.blobs = blobs
        self.min_score = min_score

    def own_settings(self) -> dict[str, Any]:
        return {
            "judge": self.judge.judge_id,
            "prompt_version": self.judge.prompt_version,
            "min_score": self.min_score,
        }

    def process_batch(self, rows: list[CandidateRow]) -> list[Verdict]:
        """Ask the judge about each (source, edit, instruction)."""
        answers = self.judge.prefilter(
            [self.blobs.view(r.source_image) for r in rows],
            [self.blobs.view(r.image) for r in rows],
            [r.instruction for r in rows],
        )
        out = []
        for row, ans in zip(rows, answers, strict=True):
            s = ans.scores
            if ans.error or s.error:
                reason = "judge_error"
            elif ans.unwanted_changes:
                reason = "unwanted_changes"
            elif not ans.aesthetic_ok:
                reason = "not_aesthetic"
            elif min(s.adherence, s.aesthetic) < self.min_score:
                reason = "low_score"
            else:
                reason = "ok"
            out.append(
                Verdict(
                    subject_id=row.candidate_id,
                    passed=reason == "ok",
                    reason=reason,
                    adherence=s.adherence,
                    aesthetic=s.aesthetic,
                    details=json.dumps(
                        {
                            "unwanted_changes": ans.unwanted_changes,
                            "aesthetic_ok": ans.aesthetic_ok,
                            **ans.details,
                        }
                    ),
                    judge_id=self.judge.judge_id,
                    prompt_version=self.judge.prompt_version,
                    error=ans.error or s.error,
                )
            )
        return out


def change_components(
    source: Image.Image, edited: Image.Image, threshold: int
) -> tuple[int, int, int]:
    """(changed pixels, 4-connected components, pixels in the largest component)."""
    return change_components_of([(source, edited)], threshold)[0]


# pixels of the image pairs compared in one numpy pass (a few hundred MB of uint8 at most)
STACK_PIXELS = 16 * 2**20


def change_components_of(
    pairs: list[tuple[Image.Image, Image.Image]], threshold: int
) -> list[tuple[int, int, int]]:
    """``change_components`` of each (source, edit) pair of the same size, computed for
    pairs of one size at a time as one stack: the difference, the threshold and the
    labelling in a few numpy and scipy calls instead of a dozen per pair (labels never
    cross from one pair to the next, so each pair's counts are its own)."""
    out: list[tuple[int, int, int]] = [(0, 0, 0)] * len(pairs)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (src, _) in enumerate(pairs):
        by_size.setdefault(src.size, []).append(i)
    for (w, h), idx in by_size.items():
        step = max(1, STACK_PIXELS // max(1, w * h))
        for lo in range(0, len(idx), step):
            part = idx[lo : lo + step]
            counts = _stack_components([pairs[i] for i in part], threshold)
            for i, c in zip(part, counts, strict=True):
                out[i] = c
    return out


def _stack_components(
    pairs: list[tuple[Image.Image, Image.Image]], threshold: int
) -> list[tuple[int, int, int]]:
    """``change_components`` of same-size pairs, as one stack."""
    a = np.stack([np.asarray(as_rgb(s)) for s, _ in pairs])
    b = np.stack([np.asarray(as_rgb(e)) for _, e in pairs])
    diff = np.maximum(a, b)
    diff -= np.minimum(a, b)  # |a - b| in uint8, without widening every pixel
    changed = diff[..., 0] > threshold
    changed |= diff[..., 1] > threshold
    changed |= diff[..., 2] > threshold
    n_changed = changed.sum(axis=(1, 2))
    if not n_changed.any():
        return [(0, 0, 0)] * len(pairs)
    from scipy import ndimage

    # 4-connected within a pair, never across two: the stack's middle plane only
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = FOUR_CONNECTED
    labels, _ = ndimage.label(changed, structure=structure)
    sizes = np.bincount(labels.ravel())
    # labels are numbered in scan order, so pair k holds the labels above every earlier
    # pair's highest and up to its own highest
    high = labels.reshape(len(pairs), -1).max(axis=1)
    low = np.maximum.accumulate(np.concatenate([[0], high[:-1]]))
    out = []
    for k in range(len(pairs)):
        n = int(high[k] - low[k]) if high[k] else 0
        largest = int(sizes[low[k] + 1 : high[k] + 1].max()) if n else 0
        out.append((int(n_changed[k]), n, largest))
    return out


class LowLevelStage(Stage[CandidateRow, Verdict]):
    """The paper's low-level check on the pixel difference of source and edit."""

    name = "lowlevel"
    input_type = CandidateRow
    output_type = Verdict
    work: ClassVar[str | None] = "cpu"  # numpy/scipy over every pixel pair

    def __init__(self, blobs: BlobStore, threshold: int = 40, min_share: float = 0.005) -> None:
        self.blobs = blobs
        self.threshold = threshold
        self.min_share = min_share

    def own_settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "min_share": self.min_share}

    def process_batch(self, rows: list[CandidateRow]) -> list[Verdict]:
        """Measure each candidate's change mask and keep those with a coherent change."""
        images = [(self.blobs.view(r.source_image), self.blobs.view(r.image)) for r in rows]
        same = [i for i, (src, edit) in enumerate(images) if src.size == edit.size]
        measured = change_components_of([images[i] for i in same], self.threshold)
        counts = dict(zip(same, measured, strict=True))
        out = []
        for i, row in enumerate(rows):
            src = images[i][0]
            if i not in counts:
                n_changed = n_comp = largest = 0
                reason = "size_mismatch"
            else:
                n_changed, n_comp, largest = counts[i]
                if n_changed == 0:
                    reason = "no_change"
                elif largest < self.min_share * n_changed:
                    reason = "fragmented_change"
                else:
                    reason = "ok"
            details = {
                "changed_pixels": n_changed,
                "changed_share": n_changed / (src.width * src.height),
                "components": n_comp,
                "largest_component": largest,
                "largest_share": largest / n_changed if n_changed else 0.0,
            }
            out.append(
                Verdict(
                    subject_id=row.candidate_id,
                    passed=reason == "ok",
                    reason=reason,
                    adherence=None,
                    aesthetic=None,
                    details=json.dumps(details),
                    judge_id="lowlevel-diff",
                    prompt_version=f"t{self.threshold}-s{self.min_share}",
                    error=None,
                )
            )
        return out
