"""The survival curve of the hard validator and the paper's automatic threshold (Fig. C.5).

For each threshold T on a grid, the share of scored candidates whose adherence and
aesthetic are both ≥ T survives. Where the curve falls off a cliff, the validator stops
being lenient about a class of defects; the paper finds two cliffs (at 4.5, −62.1 %, and
at 4.9, −84.0 %) and takes the midpoint between them, 4.7. A cliff is a grid step whose
relative drop S(T_{i-1}) → S(T_i) is a local maximum of at least ``min_drop``; the two
largest that are not neighbours are kept, and the threshold is their midpoint, snapped to
the grid. With one cliff only, the threshold is the grid step just below it (the last
threshold before the collapse), and the result says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nhr.evaluate.calibration import threshold_grid


def survival_curve(
    scores: Sequence[tuple[float, float]], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """Rows (threshold, surviving, share, drop): survivors have both scores ≥ threshold;
    ``drop`` is the relative fall from the previous threshold (None for the first, or
    when nothing survived there)."""
    mins = [min(a, b) for a, b in scores]
    total = len(mins)
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(thresholds):
        alive = sum(m >= t - 1e-9 for m in mins)
        prev = rows[i - 1]["surviving"] if i else None
        drop = round(1.0 - alive / prev, 4) if prev else None
        rows.append(
            {
                "threshold": round(float(t), 4),
                "surviving": alive,
                "share": round(alive / total, 4) if total else None,
                "drop": drop,
            }
        )
    return rows


def find_cliffs(
    curve: Sequence[dict[str, Any]], count: int = 2, min_drop: float = 0.1
) -> list[dict[str, Any]]:
    """The ``count`` largest relative drops of at least ``min_drop`` that are local maxima
    and not neighbours, in threshold order."""
    drops = [r["drop"] for r in curve]
    peaks = []
    for i, d in enumerate(drops):
        if d is None or d < min_drop or d <= 0:
            continue
        left = drops[i - 1] if i > 0 and drops[i - 1] is not None else -1.0
        right = drops[i + 1] if i + 1 < len(drops) and drops[i + 1] is not None else -1.0
        if d >= left and d >= right:
            peaks.append(i)
    chosen: list[int] = []
    for i in sorted(peaks, key=lambda j: (-drops[j], j)):
        if all(abs(i - j) > 1 for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return [
        {"threshold": curve[i]["threshold"], "drop": drops[i], "share": curve[i]["share"]}
        for i in sorted(chosen)
    ]


def auto_threshold(
    curve: Sequence[dict[str, Any]], step: float, min_drop: float = 0.1
) -> dict[str, Any]:
    """The paper's choice: the midpoint of the two cliffs, snapped to the ``step`` grid;
    ``rule`` says which rule picked it (``threshold`` is None without any cliff)."""
    cliffs = find_cliffs(curve, 2, min_drop)
    if not cliffs:
        return {"threshold": None, "cliffs": [], "rule": f"no cliff (no drop >= {min_drop})"}
    if len(cliffs) == 1:
        below = round(cliffs[0]["threshold"] - step, 4)
        return {"threshold": below, "cliffs": cliffs, "rule": "one cliff: the step below it"}
    mid = (cliffs[0]["threshold"] + cliffs[1]["threshold"]) / 2
    snapped = round(round(mid / step) * step, 4)
    return {"threshold": snapped, "cliffs": cliffs, "rule": "midpoint of two cliffs"}


def survival(
    scores: Sequence[tuple[float, float]],
    lo: float = 3.0,
    hi: float = 4.9,
    step: float = 0.1,
    min_drop: float = 0.1,
) -> dict[str, Any]:
    """The curve on [lo, hi] and the automatic threshold, as one JSON-ready dict."""
    curve = survival_curve(scores, threshold_grid(lo, hi, step))
    return {"scored": len(scores), "curve": curve, **auto_threshold(curve, step, min_drop)}
