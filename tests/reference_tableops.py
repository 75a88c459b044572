"""Straightforward per-row Python versions of the whole-table steps (the code before
they became table operations), kept as references the vectorised versions must match."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from nhr.records import (
    CandidateRow,
    ComposeJob,
    DraftRow,
    PromptRow,
    SourceRow,
    TripletRow,
    Verdict,
)
from nhr.seeds import rng_for
from nhr.stages.dedup import ORIGIN_RANK, changed_share
from nhr.stages.inversion import INVERSE_TYPES


def geometric_score(adherence: float, aesthetic: float) -> float:
    """The paper's ranking score √(adherence · aesthetic)."""
    return math.sqrt(max(adherence, 0.0) * max(aesthetic, 0.0))


@dataclass(frozen=True)
class PreferencePair:
    """(source, instruction, chosen edit, rejected edit) with the rejected one's verdict."""

    pair_id: str
    triplet_id: str
    rejected_candidate_id: str
    source_image: str
    instruction: str
    chosen_image: str
    rejected_image: str
    chosen_adherence: float
    chosen_aesthetic: float
    rejected_stage: str
    rejected_reason: str
    rejected_adherence: float | None
    rejected_aesthetic: float | None
    width: int
    height: int


def select_argmax(
    candidates: list[CandidateRow],
    verdicts: list[Verdict],
    sources: dict[str, SourceRow],
    prompts: dict[str, PromptRow],
) -> tuple[list[TripletRow], dict[str, int]]:
    """Keep, per (source, instruction), the passed candidate with the highest
    √(adh·aes) (ties: lowest candidate id). Returns the mined triplets and the drops by
    reason (``not_argmax`` for passed candidates that lost to a sibling)."""
    by_id = {c.candidate_id: c for c in candidates}
    groups: dict[tuple[str, str], list[tuple[float, str, Verdict]]] = defaultdict(list)
    for v in verdicts:
        if v.passed:
            c = by_id[v.subject_id]
            score = geometric_score(v.adherence or 0.0, v.aesthetic or 0.0)
            groups[(c.source_id, c.instruction_id)].append((-score, c.candidate_id, v))
    drops: Counter[str] = Counter()
    triplets = []
    for key in sorted(groups):
        ranked = sorted(groups[key], key=lambda t: (t[0], t[1]))
        drops["not_argmax"] += len(ranked) - 1
        neg_score, cid, v = ranked[0]
        c, src = by_id[cid], sources[by_id[cid].source_id]
        prompt = prompts[c.prompt_id]
        triplets.append(
            TripletRow(
                triplet_id=f"m-{cid}",
                origin="mined",
                parents=(cid,),
                source_image=c.source_image,
                edited_image=c.image,
                instruction=c.instruction,
                edit_type=c.edit_type,
                style=c.style,
                width=c.width,
                height=c.height,
                adherence=float(v.adherence or 0.0),
                aesthetic=float(v.aesthetic or 0.0),
                score=-neg_score,
                prompt_id=c.prompt_id,
                prompt=prompt.text,
                source_id=c.source_id,
                candidate_id=cid,
                t2i_model=src.model_id,
                t2i_seed=src.seed,
                t2i_steps=src.steps,
                editor_model=c.model_id,
                edit_seed=c.seed,
                edit_steps=c.steps,
                edit_guidance=c.guidance,
                prompter_version=prompt.prompter_version,
                writer_version=prompt.prompter_version,
                judge_id=v.judge_id,
                judge_prompt_version=v.prompt_version,
            )
        )
    return triplets, dict(drops)


def backward_consistency(
    mined: list[TripletRow], drafts: list[DraftRow], verdicts: list[Verdict]
) -> tuple[list[TripletRow], list[TripletRow], Counter[str]]:
    """(forwards kept, inverse triplets kept, drops by reason).

    A forward whose inverse was written and failed the validator is dropped together with
    its inverse (``backward_inconsistent`` counts each side); a forward whose inverse was
    skipped is kept, and the skip is counted as ``inverse_skipped_<kind>``.
    """
    by_forward = {d.parents[0]: d for d in drafts}
    by_id = {v.subject_id: v for v in verdicts}
    forwards, inverses = [], []
    drops: Counter[str] = Counter()
    for t in mined:
        draft = by_forward.get(t.triplet_id)
        if draft is None:
            forwards.append(t)
            continue
        if draft.skip_reason:
            drops[f"inverse_skipped_{draft.skip_reason.split(':', 1)[0]}"] += 1
            forwards.append(t)
            continue
        verdict = by_id.get(draft.triplet_id)
        if verdict is None:
            raise ValueError(f"inverse {draft.triplet_id} has no backward verdict: run backward()")
        if not verdict.passed:
            drops["backward_inconsistent_forward"] += 1
            drops["backward_inconsistent_inverse"] += 1
            continue
        forwards.append(t)
        inverses.append(_derived(t, draft, verdict, INVERSE_TYPES.get(t.edit_type, t.edit_type)))
    return forwards, inverses, drops


def _derived(
    base: TripletRow,
    draft: DraftRow,
    verdict: Verdict | None,
    edit_type: str,
    fallback: tuple[float, float] | None = None,
) -> TripletRow:
    """A bootstrapped triplet from its draft, scored by ``verdict`` (or ``fallback``)."""
    adh, aes = (verdict.adherence, verdict.aesthetic) if verdict else fallback or (0.0, 0.0)
    adh, aes = float(adh or 0.0), float(aes or 0.0)
    return TripletRow(
        **{
            **base.to_row(),
            "triplet_id": draft.triplet_id,
            "origin": draft.origin,
            "parents": draft.parents,
            "source_image": draft.source_image,
            "edited_image": draft.edited_image,
            "instruction": draft.instruction,
            "edit_type": edit_type,
            "adherence": adh,
            "aesthetic": aes,
            "score": geometric_score(adh, aes),
            "writer_version": draft.writer_version,
            "judge_id": verdict.judge_id if verdict else base.judge_id,
            "judge_prompt_version": verdict.prompt_version
            if verdict
            else base.judge_prompt_version,
        }
    )


def plan_compose_jobs(
    forwards: list[TripletRow],
    inverses: dict[str, str],
    max_pairs_per_source: int,
    seed: int,
) -> list[ComposeJob]:
    """Ordered pairs of consistent forward triplets of the same source, capped per source.

    ``inverses`` maps a forward triplet id to its (accepted) inverse instruction; only
    forwards with one can be the first edit of a pair. Pairs whose two edited images are
    identical are skipped (they would be a no-op instruction).
    """
    by_source: dict[str, list[TripletRow]] = defaultdict(list)
    for t in forwards:
        by_source[t.source_id].append(t)
    jobs = []
    for source_id in sorted(by_source):
        group = sorted(by_source[source_id], key=lambda t: t.triplet_id)
        pairs = [
            (a, b)
            for a in group
            for b in group
            if a.triplet_id != b.triplet_id
            and a.triplet_id in inverses
            and a.edited_image != b.edited_image
        ]
        order = rng_for(seed, source_id, "compose").permutation(len(pairs))
        for i in order[:max_pairs_per_source]:
            a, b = pairs[int(i)]
            jobs.append(
                ComposeJob(
                    job_id=f"c-{a.triplet_id}--{b.triplet_id}",
                    first=a.triplet_id,
                    second=b.triplet_id,
                    first_image=a.edited_image,
                    second_image=b.edited_image,
                    first_inverse=inverses[a.triplet_id],
                    second_instruction=b.instruction,
                    prompt=a.prompt,
                )
            )
    return jobs


def preference_pairs(
    mined: list[TripletRow],
    candidates: list[CandidateRow],
    verdicts: dict[str, list[Verdict]],
    per_group: int = 1,
) -> list[PreferencePair]:
    """Pairs for every mined triplet; ``verdicts`` maps a stage name (``prefilter``,
    ``lowlevel``, ``validator``, in pipeline order) to its verdicts."""
    if per_group <= 0:
        return []
    failed: dict[str, tuple[int, str, Verdict]] = {}
    for rank, (stage, rows) in enumerate(verdicts.items()):
        for v in rows:
            if not v.passed and v.subject_id not in failed:
                failed[v.subject_id] = (rank, stage, v)
    groups: dict[tuple[str, str], list[CandidateRow]] = {}
    for c in candidates:
        if c.candidate_id in failed:
            groups.setdefault((c.source_id, c.instruction_id), []).append(c)
    by_id = {c.candidate_id: c for c in candidates}

    def hardness(c: CandidateRow) -> tuple[int, float, str]:
        """Later stage first, then higher scores: the negatives closest to a pass."""
        rank, _, v = failed[c.candidate_id]
        return (-rank, -(v.adherence or 0.0) * (v.aesthetic or 0.0), c.candidate_id)

    pairs = []
    for t in mined:
        chosen = by_id[t.candidate_id]
        group = groups.get((chosen.source_id, chosen.instruction_id), [])
        for c in sorted(group, key=hardness)[:per_group]:
            if c.image == chosen.image:
                continue
            _, stage, v = failed[c.candidate_id]
            pairs.append(
                PreferencePair(
                    pair_id=f"pref-{t.triplet_id}-{c.candidate_id}",
                    triplet_id=t.triplet_id,
                    rejected_candidate_id=c.candidate_id,
                    source_image=t.source_image,
                    instruction=t.instruction,
                    chosen_image=t.edited_image,
                    rejected_image=c.image,
                    chosen_adherence=t.adherence,
                    chosen_aesthetic=t.aesthetic,
                    rejected_stage=stage,
                    rejected_reason=v.reason,
                    rejected_adherence=v.adherence,
                    rejected_aesthetic=v.aesthetic,
                    width=t.width,
                    height=t.height,
                )
            )
    return pairs


def composed_reference(
    forwards: list[TripletRow],
    drafts: list[DraftRow],
    verdicts: list[Verdict] | None,
) -> tuple[list[TripletRow], Counter[str]]:
    """Composed triplets that pass (both parents consistent), and the drops."""
    drops: Counter[str] = Counter()
    by_id = {t.triplet_id: t for t in forwards}
    validate = verdicts is not None
    by_subject = {v.subject_id: v for v in verdicts or []}
    out = []
    for d in drafts:
        if d.skip_reason:
            drops[f"compose_skipped_{d.skip_reason.split(':', 1)[0]}"] += 1
            continue
        first, second = by_id.get(d.parents[0]), by_id.get(d.parents[1])
        if first is None or second is None:
            drops["compose_parent_dropped"] += 1
            continue
        verdict = by_subject.get(d.triplet_id)
        if validate and (verdict is None or not verdict.passed):
            drops["compose_failed_validator"] += 1
            continue
        fallback = (
            min(first.adherence, second.adherence),
            min(first.aesthetic, second.aesthetic),
        )
        out.append(_derived(second, d, verdict, "composed", fallback))
    return out, drops


def perceptual_hash(image: Image.Image) -> Any:
    """The 64-bit DCT perceptual hash of an image."""
    import imagehash

    return imagehash.phash(image)


class OldBandIndex:
    """Finds kept rows whose 64-bit hash is within ``max_distance`` bits of a query.

    The hash is cut into ``max_distance + 1`` bands; two hashes that differ in at most
    ``max_distance`` bits agree on at least one band (pigeonhole), so looking up each band
    finds every candidate without comparing against all kept rows.
    """

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.n_bands = max_distance + 1
        self.buckets: dict[tuple[int, int], list[tuple[int, TripletRow]]] = defaultdict(list)

    def _bands(self, bits: int) -> list[tuple[int, int]]:
        edges = np.linspace(0, 64, self.n_bands + 1).astype(int)
        return [
            (i, (bits >> int(lo)) & ((1 << int(hi - lo)) - 1))
            for i, (lo, hi) in enumerate(itertools.pairwise(edges))
        ]

    def add(self, bits: int, row: TripletRow) -> None:
        """Index a kept row by its hash."""
        for band in self._bands(bits):
            self.buckets[band].append((bits, row))

    def near(self, bits: int) -> list[TripletRow]:
        """Kept rows whose hash is within ``max_distance`` bits, each once."""
        found: dict[str, TripletRow] = {}
        for band in self._bands(bits):
            for other_bits, row in self.buckets.get(band, []):
                if (other_bits ^ bits).bit_count() <= self.max_distance:
                    found[row.triplet_id] = row
        return list(found.values())


def hash_bits(image: Image.Image) -> int:
    """The perceptual hash of an image as a 64-bit integer."""
    bits = np.asarray(perceptual_hash(image).hash, dtype=bool).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def dedup(
    rows: list[TripletRow],
    load: Callable[[str], Image.Image],
    max_distance: int = 4,
    max_changed_share: float = 0.001,
) -> tuple[list[TripletRow], dict[str, int], dict[str, str]]:
    """Kept rows, drops by reason, and for each dropped id the id of the row it duplicates."""
    ordered = sorted(rows, key=lambda r: (ORIGIN_RANK.get(r.origin, 9), -r.score, r.triplet_id))
    hashes: dict[str, int] = {}

    def bits_of(rel: str) -> int:
        if rel not in hashes:
            hashes[rel] = hash_bits(load(rel))
        return hashes[rel]

    index = OldBandIndex(max_distance)
    kept: list[TripletRow] = []
    seen_pairs: dict[tuple[str, str], str] = {}
    drops: Counter[str] = Counter()
    duplicate_of: dict[str, str] = {}
    for row in ordered:
        pair = (row.source_image, row.edited_image)
        if pair in seen_pairs:
            drops["exact_duplicate"] += 1
            duplicate_of[row.triplet_id] = seen_pairs[pair]
            continue
        h_edit = bits_of(row.edited_image)
        match = next(
            (
                other
                for other in index.near(bits_of(row.source_image))
                if (bits_of(other.edited_image) ^ h_edit).bit_count() <= max_distance
                and changed_share(load(other.source_image), load(row.source_image))
                <= max_changed_share
                and changed_share(load(other.edited_image), load(row.edited_image))
                <= max_changed_share
            ),
            None,
        )
        if match is not None:
            drops["near_duplicate"] += 1
            duplicate_of[row.triplet_id] = match.triplet_id
            continue
        kept.append(row)
        seen_pairs[pair] = row.triplet_id
        index.add(bits_of(row.source_image), row)
    return kept, dict(drops), duplicate_of
