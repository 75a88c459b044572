"""Validator calibration against human ratings: the paper's Table 1, Table B.1, Figs B.3–B.5.

A ratings file holds one row per (item, rater): ``item_id``, ``rater`` (optional),
``adherence`` and ``aesthetic`` on 1–5, as CSV or JSONL. The validator's scores of the
same items (a run's ``validator`` table, or any id → scores mapping) are compared with
the raters' mean: MAE and Spearman ρ per dimension, precision/recall/F1/accuracy at a
threshold with "positive = both human scores > 4.0", MAE by human score bucket, 5×5
confusion matrices of rounded scores, precision and recall against the threshold, and
inter-rater agreement (mean pairwise Spearman ρ between raters on shared items, and
Krippendorff's α). On the synthetic world the truth stands in for the raters
(``truth_ratings``). Several judges are compared on the same ratings by
``judges_side_by_side``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

from nhr.errors import NhrError

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline
    from nhr.store import RunStore
    from nhr.tables import RunTables

DIMENSIONS = ("adherence", "aesthetic")
# Table 1 of the paper: its tuned validator vs people, and people vs each other (ρ)
PAPER_SPEARMAN = {"adherence": 0.815, "aesthetic": 0.631}
PAPER_INTER_RATER = {"adherence": 0.64, "aesthetic": 0.41}
BUCKETS = ((1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0))
Scores = Mapping[str, tuple[float, float]]


class RatingsError(NhrError):
    """A ratings file is missing, malformed, out of range, or names unknown items."""


@dataclass(frozen=True)
class Rating:
    """One rater's scores of one item, on 1–5."""

    item_id: str
    rater: str
    adherence: float
    aesthetic: float


# ---------------------------------------------------------------- reading
def read_ratings(path: Path | str) -> list[Rating]:
    """Ratings from a CSV or JSONL file (columns item_id, rater, adherence, aesthetic)."""
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"ratings file {path} does not exist", "pass an existing CSV or JSONL")
    if path.suffix.lower() in (".jsonl", ".json"):
        raw = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RatingsError(
                        f"{path} line {i} is not JSON", "write one JSON object per line"
                    ) from None
    else:
        with path.open(newline="") as handle:
            raw = list(csv.DictReader(handle))
    return ratings_from_rows(raw, str(path))


def ratings_from_rows(rows: Sequence[Mapping[str, Any]], where: str = "ratings") -> list[Rating]:
    """Validated ratings from plain rows; scores must be numbers in [1, 5]."""
    if not rows:
        raise RatingsError(
            f"{where} holds no ratings", "add rows: item_id, rater, adherence, aesthetic"
        )
    need = ("item_id", *DIMENSIONS)
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise RatingsError(
            f"{where} has no column(s) {missing}",
            "give columns item_id, adherence, aesthetic (and rater, if several people rated)",
        )
    out = []
    for i, row in enumerate(rows, 1):
        values = []
        for dim in DIMENSIONS:
            try:
                x = float(row[dim])
            except (TypeError, ValueError):
                x = math.nan
            if not 1.0 <= x <= 5.0:
                raise RatingsError(
                    f"{where} row {i} (item {row.get('item_id')!r}): {dim}={row[dim]!r} "
                    "is not a score in [1, 5]",
                    "fix the row: scores are numbers from 1 to 5",
                )
            values.append(x)
        rater = str(row.get("rater") or "rater")
        out.append(Rating(str(row["item_id"]), rater, values[0], values[1]))
    seen: set[tuple[str, str]] = set()
    for r in out:
        if (r.item_id, r.rater) in seen:
            raise RatingsError(
                f"{where}: rater {r.rater!r} rated item {r.item_id!r} twice",
                "keep one row per (item_id, rater)",
            )
        seen.add((r.item_id, r.rater))
    return out


def write_ratings(path: Path | str, ratings: Iterable[Rating]) -> Path:
    """Write ratings as CSV (the format ``read_ratings`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "rater", *DIMENSIONS])
        for r in ratings:
            writer.writerow([r.item_id, r.rater, r.adherence, r.aesthetic])
    return path


# ---------------------------------------------------------------- a run's side
def validator_scores(tables: RunTables, table: str = "validator") -> dict[str, tuple[float, float]]:
    """The validator's (adherence, aesthetic) of every candidate it scored without error."""
    v = tables.read(table, ["subject_id", "adherence", "aesthetic", "error"])
    return {
        sid: (float(adh), float(aes))
        for sid, adh, aes, err in zip(
            *(v.column(c).to_pylist() for c in v.column_names), strict=True
        )
        if err is None and adh is not None and aes is not None
    }


def truth_ratings(tables: RunTables, truth: Any) -> list[Rating]:
    """The synthetic world's truth as the "ratings" of the candidates the validator scored."""
    from nhr.evaluate.truth import candidate_truth

    truths = candidate_truth(tables, truth, sorted(validator_scores(tables)))
    return [
        Rating(cid, "truth", float(t.adherence), float(t.aesthetic))
        for cid, t in sorted(truths.items())
    ]


def open_run(run_dir: Path | str) -> Pipeline:
    """A finished run (a folder or an object-store URL), read with its own saved config
    (nothing is re-checked or written)."""
    import yaml

    from nhr.config import PipelineConfig
    from nhr.errors import RunFolderError
    from nhr.pipeline import Pipeline
    from nhr.store.files import open_files

    files = open_files(run_dir)
    if not files.exists("config.yaml"):
        raise RunFolderError(f"{run_dir} has no config.yaml", "pass the folder of an nhr run")
    cfg = PipelineConfig.from_params(yaml.safe_load(files.read_bytes("config.yaml")) or {})
    return Pipeline(run_dir, cfg, progress=False)


def write_result(
    store: RunStore,
    evaluated: Pipeline,
    ratings: str,
    result: dict[str, Any],
    survival: dict[str, Any],
    judges: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write ``plots/calibration.json`` of an evaluation run (through its store: a folder
    or an object store) and return it: the evaluated run, the ratings' source, the
    calibration, the survival curve and the judges side by side."""
    out = {"evaluated_run": str(evaluated.store.root), "ratings": ratings, **result}
    out.update(survival=survival, judges=judges)
    store.write_json("plots/calibration.json", out)
    return out


# ---------------------------------------------------------------- metrics
def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman ρ, or None for fewer than 3 pairs or a constant input."""
    if len(a) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else round(rho, 4)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def classify(
    judge: np.ndarray, human: np.ndarray, threshold: float, positive: float
) -> dict[str, Any]:
    """Precision, recall, F1, accuracy of "judge passes (both ≥ threshold)" against
    "humans accept (both > positive)"; arrays are (items, 2)."""
    pred = (judge >= threshold).all(axis=1)
    true = (human > positive).all(axis=1)
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true).sum())
    tn = int((~pred & ~true).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn) if tp + fp and tp + fn else None
    return {
        "threshold": round(float(threshold), 4),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _ratio(tp + tn, len(pred)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _rounded(x: np.ndarray) -> np.ndarray:
    """Scores rounded half up to the integers 1–5 (confusion matrix classes)."""
    return np.clip(np.floor(x + 0.5), 1, 5).astype(int)


def inter_rater(ratings: Sequence[Rating]) -> dict[str, Any]:
    """Mean pairwise Spearman ρ (and MAE) between raters, on the items both rated, and
    Krippendorff's α (interval and ordinal) over every item rated more than once."""
    from nhr.evaluate.agreement import krippendorff_alpha

    by_rater: dict[str, dict[str, Rating]] = defaultdict(dict)
    for r in ratings:
        by_rater[r.rater][r.item_id] = r
    out: dict[str, Any] = {"raters": len(by_rater), "pairs": 0}
    for dim in DIMENSIONS:
        rhos, maes = [], []
        for a, b in itertools.combinations(sorted(by_rater), 2):
            shared = sorted(set(by_rater[a]) & set(by_rater[b]))
            xa = [getattr(by_rater[a][i], dim) for i in shared]
            xb = [getattr(by_rater[b][i], dim) for i in shared]
            rho = _spearman(xa, xb)
            if rho is not None:
                rhos.append(rho)
            if shared:
                maes.append(float(np.mean(np.abs(np.array(xa) - np.array(xb)))))
        out[f"{dim}_spearman"] = round(float(np.mean(rhos)), 4) if rhos else None
        out[f"{dim}_mae"] = round(float(np.mean(maes)), 4) if maes else None
        out["pairs"] = max(out["pairs"], len(maes))
        units: dict[str, list[float]] = defaultdict(list)
        for r in ratings:
            units[r.item_id].append(getattr(r, dim))
        for level in ("interval", "ordinal"):
            out[f"{dim}_alpha_{level}"] = krippendorff_alpha(list(units.values()), level)
    return out


def threshold_grid(lo: float = 1.0, hi: float = 5.0, step: float = 0.05) -> list[float]:
    """Thresholds from ``lo`` to ``hi`` inclusive, ``step`` apart (rounded to 4 places)."""
    n = round((hi - lo) / step)
    return [round(lo + i * step, 4) for i in range(n + 1)]


def paired(judge: Scores, ratings: Sequence[Rating]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rated item ids, the validator's scores and the raters' mean scores, as (items, 2)
    arrays; every rated item must be scored (else a RatingsError lists the unknown ids)."""
    if not ratings:
        raise RatingsError("no ratings given", "pass a ratings file with at least 3 items")
    unknown = sorted({r.item_id for r in ratings} - set(judge))
    if unknown:
        raise RatingsError(
            f"{len(unknown)} rated item id(s) were not scored by the validator, e.g. {unknown[:3]}",
            "rate only items the validator scored (the run's validator table ids), "
            "or score those items first",
        )
    per_item: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        per_item[r.item_id].append(r)
    ids = sorted(per_item)
    human = np.array(
        [[np.mean([getattr(r, d) for r in per_item[i]]) for d in DIMENSIONS] for i in ids]
    )
    return ids, np.array([judge[i] for i in ids], dtype=float), human


def beside_paper(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dimension: our MAE and ρ, the paper's ρ (Table 1), inter-rater ρ ours and theirs."""
    return [
        {
            "dimension": dim,
            "mae": result["per_dimension"][dim]["mae"],
            "spearman": result["per_dimension"][dim]["spearman"],
            "paper_spearman": PAPER_SPEARMAN[dim],
            "inter_rater_spearman": result["inter_rater"][f"{dim}_spearman"],
            "paper_inter_rater_spearman": PAPER_INTER_RATER[dim],
        }
        for dim in DIMENSIONS
    ]


def calibrate(
    judge: Scores,
    ratings: Sequence[Rating],
    threshold: float = 4.7,
    positive: float = 4.0,
    grid: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Everything the paper reports about its validator against people, as one dict.

    ``judge`` maps item ids to the validator's (adherence, aesthetic); every rated item
    must be scored (else a RatingsError lists the unknown ids). The human score of an
    item is the mean of its raters.
    """
    ids, pred, human = paired(judge, ratings)
    per_dim = {}
    by_bucket: dict[str, list[dict[str, Any]]] = {}
    confusion: dict[str, list[list[int]]] = {}
    for k, dim in enumerate(DIMENSIONS):
        err = np.abs(pred[:, k] - human[:, k])
        per_dim[dim] = {
            "mae": round(float(err.mean()), 4),
            "spearman": _spearman(list(pred[:, k]), list(human[:, k])),
        }
        rows = []
        for lo, hi in BUCKETS:
            last = hi == BUCKETS[-1][1]
            mask = (human[:, k] >= lo) & ((human[:, k] <= hi) if last else (human[:, k] < hi))
            rows.append(
                {
                    "bucket": f"{lo:g}–{hi:g}",
                    "n": int(mask.sum()),
                    "mae": round(float(err[mask].mean()), 4) if mask.any() else None,
                }
            )
        by_bucket[dim] = rows
        matrix = np.zeros((5, 5), dtype=int)
        for h, j in zip(_rounded(human[:, k]), _rounded(pred[:, k]), strict=True):
            matrix[h - 1, j - 1] += 1
        confusion[dim] = matrix.tolist()
    grid = list(grid) if grid is not None else threshold_grid(3.0, 5.0, 0.05)
    return {
        "items": len(ids),
        "ratings": len(ratings),
        "human_positive_above": positive,
        "human_positives": int((human > positive).all(axis=1).sum()),
        "per_dimension": per_dim,
        "at_threshold": classify(pred, human, threshold, positive),
        "mae_by_bucket": by_bucket,
        "confusion": confusion,
        "confusion_axes": "rows: human score 1–5 (rounded), columns: validator score 1–5",
        "vs_threshold": [classify(pred, human, t, positive) for t in grid],
        "inter_rater": inter_rater(ratings),
    }


# ---------------------------------------------------------------- judges side by side
PRECISION_TARGET = 0.9


def threshold_for_precision(
    judge: np.ndarray,
    human: np.ndarray,
    positive: float = 4.0,
    target: float = PRECISION_TARGET,
    grid: Sequence[float] | None = None,
) -> float | None:
    """The lowest threshold of the grid from which on the judge's precision stays at or
    above ``target`` (at that threshold and every higher one that passes anything);
    None when no threshold does."""
    found = None
    for t in sorted(grid if grid is not None else threshold_grid(1.0, 5.0, 0.05), reverse=True):
        precision = classify(judge, human, t, positive)["precision"]
        if precision is None:
            continue
        if precision < target:
            break
        found = float(t)
    return found


def judges_side_by_side(
    judges: Mapping[str, Scores],
    ratings: Sequence[Rating],
    threshold: float = 4.7,
    positive: float = 4.0,
) -> list[dict[str, Any]]:
    """One row per judge on the same ratings: MAE and Spearman ρ per dimension,
    precision and recall at ``threshold``, and the threshold it needs for a precision of
    0.9. Each judge must have scored every rated item."""
    rows = []
    for judge_id, scores in judges.items():
        _, pred, human = paired(scores, ratings)
        at = classify(pred, human, threshold, positive)
        row: dict[str, Any] = {"judge_id": judge_id, "items": len(pred)}
        for k, dim in enumerate(DIMENSIONS):
            row[f"mae_{dim}"] = round(float(np.abs(pred[:, k] - human[:, k]).mean()), 4)
            row[f"spearman_{dim}"] = _spearman(list(pred[:, k]), list(human[:, k]))
        row.update(
            {
                "threshold": round(float(threshold), 4),
                "precision": at["precision"],
                "recall": at["recall"],
                "threshold_for_precision_0_9": threshold_for_precision(pred, human, positive),
                "vs_threshold": [
                    classify(pred, human, t, positive) for t in threshold_grid(3.0, 5.0, 0.05)
                ],
            }
        )
        rows.append(row)
    return rows
