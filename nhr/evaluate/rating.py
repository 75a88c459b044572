"""Human ratings of a run's candidates: the sample to rate, resumable sessions, raters.

The items are a seeded sample of the candidates a run's validator scored, stratified by
its score √(adherence·aesthetic) so that every band is rated, failed candidates
included: the candidates the validator passed (both scores ≥ the threshold) form one
stratum, and the failed ones are cut into ``strata − 1`` equal-width bands of
[1, threshold). Each stratum gets an equal share of the sample (a small stratum gives
all it has, the rest goes to the others); the items are then shuffled, so a rater never
sees the strata in order. The sample is written once (``rating_items.jsonl`` beside the
ratings file) and reused, so every rater and every session rates the same items.

A ``RatingSession`` is one rater's pass over the items: it skips what that rater already
rated or skipped, and writes each rating at once into the ratings file that
``09_calibrate_validator`` reads (CSV: item_id, rater, adherence, aesthetic), under a
file lock, so several raters may rate side by side and a closed notebook resumes where
it stopped. Skips go to a file beside it (``<ratings>.skips.jsonl``). Every file written
here (sample, ratings, skips, lock) is a new file with the mode ``open`` gives (0666 less
the umask), so on a shared machine another rater's account reads what one wrote. Nothing
here needs a browser: ``nhr.evaluate.rating_ui`` binds the widgets.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nhr.evaluate.calibration import Rating, RatingsError, read_ratings, write_ratings
from nhr.store import atomic_write_bytes

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline

ITEMS_FILE = "rating_items.jsonl"
NO_RATINGS_YET = "no ratings yet: rate items in the widget above, then run the cells below again"
SCALE = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ScoredEdit:
    """One edit: its id, images (paths relative to the run folder), instruction, and
    adherence and aesthetic scores on 1–5."""

    item_id: str
    source_image: str
    edited_image: str
    instruction: str
    adherence: float
    aesthetic: float


@dataclass(frozen=True)
class RatingItem(ScoredEdit):
    """One candidate to rate: the edit with the validator's scores, verdict and stratum
    (kept, never shown to raters)."""

    passed: bool
    stratum: int


# ---------------------------------------------------------------- the sample
def strata_of(scores: np.ndarray, threshold: float, strata: int) -> np.ndarray:
    """The stratum of each validator score √(adh·aes): the last is the passed, the
    others equal-width bands of [1, threshold)."""
    if strata < 2:
        raise ValueError(f"strata must be at least 2 (failed and passed), got {strata}")
    width = (threshold - 1.0) / (strata - 1)
    band = np.clip(np.floor((scores - 1.0) / width), 0, strata - 2).astype(int)
    return band


def allocate(sizes: Sequence[int], n: int) -> list[int]:
    """An equal share of ``n`` per stratum, capped by its size, the rest spread on."""
    take = [0] * len(sizes)
    left = min(n, sum(sizes))
    while left > 0:
        open_ = [i for i, s in enumerate(sizes) if take[i] < s]
        share = max(1, left // len(open_))
        for i in open_:
            add = min(share, sizes[i] - take[i], left)
            take[i] += add
            left -= add
            if left == 0:
                break
    return take


def sample_items(
    pipe: Pipeline, n: int, seed: int = 0, strata: int = 5, threshold: float = 4.7
) -> list[RatingItem]:
    """A seeded, stratified sample of the candidates the validator scored (see above)."""
    verdicts = {
        v.subject_id: v
        for v in pipe.rows("validator")
        if v.error is None and v.adherence is not None and v.aesthetic is not None
    }
    cands = sorted(
        (c for c in pipe.rows("candidates") if c.candidate_id in verdicts),
        key=lambda c: c.candidate_id,
    )
    if not cands:
        raise RatingsError(
            f"{pipe.store.root} has no candidates scored by the validator",
            "run the chain through 05_validate first",
        )
    adh = np.array([verdicts[c.candidate_id].adherence for c in cands], dtype=float)
    aes = np.array([verdicts[c.candidate_id].aesthetic for c in cands], dtype=float)
    passed = (adh >= threshold) & (aes >= threshold)
    score = np.sqrt(np.maximum(adh, 0) * np.maximum(aes, 0))
    stratum = np.where(passed, strata - 1, strata_of(score, threshold, strata))
    rng = np.random.default_rng([seed, 1303])
    members = [np.flatnonzero(stratum == k) for k in range(strata)]
    take = allocate([len(m) for m in members], n)
    chosen = np.concatenate(
        [rng.choice(m, size=t, replace=False) for m, t in zip(members, take, strict=True) if t]
    )
    rng.shuffle(chosen)
    return [
        RatingItem(
            item_id=cands[i].candidate_id,
            source_image=cands[i].source_image,
            edited_image=cands[i].image,
            instruction=cands[i].instruction,
            adherence=float(adh[i]),
            aesthetic=float(aes[i]),
            passed=bool(passed[i]),
            stratum=int(stratum[i]),
        )
        for i in chosen
    ]


def file_mode() -> int:
    """The mode a new file gets from ``open`` here: 0666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_shared(path: Path, data: bytes) -> None:
    """Write ``data`` atomically, with the mode of every other rating file."""
    atomic_write_bytes(path, data)
    os.chmod(path, file_mode())  # the temp file it was renamed from is private (0600)


def write_items(path: Path | str, items: Sequence[RatingItem]) -> Path:
    """Write the items as JSON lines (atomically)."""
    path = Path(path)
    lines = "".join(json.dumps(dataclasses.asdict(i)) + "\n" for i in items)
    _write_shared(path, lines.encode())
    return path


def read_items(path: Path | str) -> list[RatingItem]:
    """The items of a rating sample file."""
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"rating items file {path} does not exist", "draw it: prepare_items")
    return [RatingItem(**json.loads(line)) for line in path.read_text().splitlines() if line]


def items_path(ratings_file: Path | str) -> Path:
    """Where the sample of a ratings file lives (beside it)."""
    return Path(ratings_file).parent / ITEMS_FILE


def prepare_items(
    pipe: Pipeline,
    ratings_file: Path | str,
    n: int,
    seed: int = 0,
    strata: int = 5,
    threshold: float = 4.7,
) -> list[RatingItem]:
    """The sample of a ratings file: drawn and written the first time, then reused."""
    path = items_path(ratings_file)
    if path.is_file():
        return read_items(path)
    items = sample_items(pipe, n, seed, strata, threshold)
    write_items(path, items)
    return items


# ---------------------------------------------------------------- a rater's session
def ratings_so_far(ratings_file: Path | str) -> list[Rating]:
    """Every rating in a ratings file; none before the first (no file, or no rows yet)."""
    path = Path(ratings_file)
    if not path.is_file() or not path.read_text().strip():
        return []
    try:
        return read_ratings(path)
    except RatingsError as err:
        if "holds no ratings" in err.problem:
            return []
        raise


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock beside ``path`` (several raters' kernels write one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # opened for reading: flock needs no more, so a lock file another rater made will do
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def skips_path(ratings_file: Path | str) -> Path:
    """The file of skipped items beside a ratings file."""
    p = Path(ratings_file)
    return p.with_name(p.stem + ".skips.jsonl")


class RatingSession:
    """One rater's resumable pass over the items (see the module docstring)."""

    def __init__(self, items: Sequence[RatingItem], ratings_file: Path | str, rater: str) -> None:
        rater = str(rater).strip()
        if not rater or "," in rater:
            raise RatingsError(f"rater id {rater!r}", "give a short name without commas")
        self.items = list(items)
        self.by_id = {i.item_id: i for i in self.items}
        self.ratings_file = Path(ratings_file)
        self.rater = rater

    # ---- reading --------------------------------------------------------------------
    def ratings(self) -> list[Rating]:
        """Every rater's ratings so far."""
        return ratings_so_far(self.ratings_file)

    def skipped(self) -> set[str]:
        """Item ids this rater skipped."""
        path = skips_path(self.ratings_file)
        if not path.is_file():
            return set()
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return {r["item_id"] for r in rows if r["rater"] == self.rater}

    def done(self) -> set[str]:
        """Item ids this rater rated."""
        return {r.item_id for r in self.ratings() if r.rater == self.rater}

    def todo(self) -> list[RatingItem]:
        """The items this rater has neither rated nor skipped, in sample order."""
        seen = self.done() | self.skipped()
        return [i for i in self.items if i.item_id not in seen]

    def current(self) -> RatingItem | None:
        """The next item to rate, or None when this rater is through."""
        todo = self.todo()
        return todo[0] if todo else None

    def progress(self) -> dict[str, int]:
        """Rated, skipped and left of this rater, and the sample's size."""
        done, skipped = self.done(), self.skipped()
        return {
            "rated": len(done),
            "skipped": len(skipped - done),
            "left": len(self.todo()),
            "total": len(self.items),
        }

    # ---- writing --------------------------------------------------------------------
    def rate(self, item_id: str, adherence: float, aesthetic: float) -> Rating:
        """Record (or replace) this rater's rating of an item."""
        if item_id not in self.by_id:
            raise RatingsError(f"item {item_id!r} is not in the sample", "rate a sampled item")
        for name, x in (("adherence", adherence), ("aesthetic", aesthetic)):
            if isinstance(x, bool) or not isinstance(x, int | float) or not 1 <= x <= 5:
                raise RatingsError(f"{name}={x!r} is not a score in [1, 5]", "pick 1 to 5")
        rating = Rating(item_id, self.rater, float(adherence), float(aesthetic))
        with _locked(self.ratings_file):
            kept = [r for r in self.ratings() if (r.item_id, r.rater) != (item_id, self.rater)]
            # a new file renamed over the old: whole for readers, and the writer's own
            tmp = self.ratings_file.with_name(f".tmp-{os.getpid()}-{self.ratings_file.name}")
            try:
                write_ratings(tmp, [*kept, rating])
                os.chmod(tmp, file_mode())
                os.replace(tmp, self.ratings_file)
            finally:
                tmp.unlink(missing_ok=True)
        return rating

    def skip(self, item_id: str) -> None:
        """Record that this rater skipped an item (it is not asked again)."""
        if item_id not in self.by_id:
            raise RatingsError(f"item {item_id!r} is not in the sample", "skip a sampled item")
        path = skips_path(self.ratings_file)
        with _locked(self.ratings_file):
            old = path.read_bytes() if path.is_file() else b""
            line = json.dumps({"item_id": item_id, "rater": self.rater}) + "\n"
            _write_shared(path, old + line.encode())


# ---------------------------------------------------------------- simulated raters
def simulate_ratings(
    pipe: Pipeline,
    items: Sequence[RatingItem],
    raters: int = 2,
    noise: float = 0.6,
    seed: int = 0,
    share: float = 1.0,
) -> list[Rating]:
    """Ratings of the items by simulated people: the synthetic world's truth plus rater
    noise (normal, ``noise`` sd), rounded to the integers 1–5 as people answer; each
    rater rates a seeded ``share`` of the items. For tests and the demo: a real run has
    no truth."""
    from nhr.evaluate.truth import candidate_truth

    truths = candidate_truth(pipe.tables, pipe.backends.truth, sorted({i.item_id for i in items}))
    out = []
    for r in range(raters):
        rng = np.random.default_rng([seed, r, 7])
        for item in items:
            if rng.random() >= share:
                continue
            t = truths[item.item_id]
            vals = [
                int(np.clip(math.floor(x + rng.normal(0.0, noise) + 0.5), 1, 5))
                for x in (float(t.adherence), float(t.aesthetic))
            ]
            out.append(Rating(item.item_id, f"sim-{r + 1}", float(vals[0]), float(vals[1])))
    return out


def summary(ratings_file: Path | str, items: Sequence[RatingItem]) -> dict[str, Any]:
    """Ratings per rater, items rated by at least one and by two or more raters (and,
    before the first rating, what to do next)."""
    session_ratings = ratings_so_far(ratings_file)
    per_rater: dict[str, int] = {}
    per_item: dict[str, int] = {}
    for r in session_ratings:
        per_rater[r.rater] = per_rater.get(r.rater, 0) + 1
        per_item[r.item_id] = per_item.get(r.item_id, 0) + 1
    out: dict[str, Any] = {
        "items": len(items),
        "ratings": len(session_ratings),
        "per_rater": per_rater,
        "rated_items": len(per_item),
        "items_with_two_or_more": sum(1 for v in per_item.values() if v >= 2),
    }
    if not session_ratings:
        out["next"] = NO_RATINGS_YET
    return out
