"""The evaluation figures: datasets compared (Table 3 beside), calibration (Figs B.3–B.5
and a scatter), the survival curve (Fig. C.5), and the ablations.

Every function returns a matplotlib Figure; ``nhr.plots.save`` writes it to
``<run>/plots/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from nhr.evaluate.calibration import DIMENSIONS

OURS, PAPER = "#4C72B0", "#DD8452"


def dataset_scores(table: Any) -> Figure:
    """Mean adherence, aesthetics and geometric mean per dataset (best first), with the
    paper's Table 3 geometric mean marked where known."""
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    for k, (col, colour) in enumerate(
        (("adherence", "#8DA0CB"), ("aesthetic", "#A6D854"), ("geometric_mean", OURS))
    ):
        values = [r[col] for r in rows]
        ax.bar(x + (k - 1) * 0.26, values, width=0.26, label=col.replace("_", " "), color=colour)
        if col == "geometric_mean":
            for xi, v in zip(x, values, strict=True):
                if not math.isnan(v):
                    ax.text(xi + 0.26, v + 0.04, f"{v:.2f}", ha="center", fontsize=8)
    paper = [r.get("paper_geometric_mean") for r in rows]
    known = [(xi, p) for xi, p in zip(x, paper, strict=True) if p is not None and not _nan(p)]
    if known:
        ax.scatter(
            [k[0] + 0.26 for k in known],
            [k[1] for k in known],
            marker="D",
            color=PAPER,
            zorder=3,
            label="paper, Table 3 (geometric mean)",
        )
    ax.set_xticks(x, [r["dataset"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(1, 5.3)
    ax.set_ylabel("validator score (1–5)")
    ax.set_title("datasets scored by the validator (ranked by geometric mean)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def calibration_scatter(
    judge: Sequence[tuple[float, float]],
    human: Sequence[tuple[float, float]],
    result: dict[str, Any],
) -> Figure:
    """Validator vs human score per dimension (jittered), with MAE and ρ in the title."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    rng = np.random.default_rng(0)
    j, h = np.array(judge, dtype=float), np.array(human, dtype=float)
    for k, (ax, dim) in enumerate(zip(axes, DIMENSIONS, strict=True)):
        jitter = rng.uniform(-0.06, 0.06, len(h))
        ax.scatter(h[:, k] + jitter, j[:, k], s=6, alpha=0.35, color=OURS)
        ax.plot([1, 5], [1, 5], color="k", lw=0.8)
        stats = result["per_dimension"][dim]
        ax.set_title(f"{dim}: MAE {stats['mae']:.3f}, ρ {_fmt(stats['spearman'])}")
        ax.set_xlabel("human (or truth) score")
        ax.set_ylabel("validator score")
        ax.set_xlim(0.8, 5.2)
        ax.set_ylim(0.8, 5.2)
    fig.tight_layout()
    return fig


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def mae_by_bucket(result: dict[str, Any]) -> Figure:
    """MAE of the validator per human score bucket, per dimension (Fig. B.3)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    buckets = [b["bucket"] for b in result["mae_by_bucket"][DIMENSIONS[0]]]
    x = np.arange(len(buckets))
    for k, dim in enumerate(DIMENSIONS):
        rows = result["mae_by_bucket"][dim]
        values = [np.nan if r["mae"] is None else r["mae"] for r in rows]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, width=0.38, label=dim)
        for bar, r in zip(bars, rows, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                0.02,
                f"n={r['n']}",
                ha="center",
                fontsize=7,
                rotation=90,
                va="bottom",
                color="white",
            )
    ax.set_xticks(x, buckets)
    ax.set_xlabel("human score bucket")
    ax.set_ylabel("MAE of the validator")
    ax.set_title("validator error by score bucket")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrices(result: dict[str, Any]) -> Figure:
    """5×5 confusion matrices of rounded scores, human rows × validator columns (Fig. B.4)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    for ax, dim in zip(axes, DIMENSIONS, strict=True):
        m = np.array(result["confusion"][dim])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > m.max() / 2 else "black",
            )
        ax.set_xticks(range(5), range(1, 6))
        ax.set_yticks(range(5), range(1, 6))
        ax.set_xlabel("validator score (rounded)")
        ax.set_ylabel("human score (rounded)")
        ax.set_title(dim)
    fig.tight_layout()
    return fig


def precision_recall(result: dict[str, Any]) -> Figure:
    """Precision, recall and F1 of the validator's pass against the threshold (Fig. B.5)."""
    rows = result["vs_threshold"]
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key in ("precision", "recall", "f1"):
        ax.plot(t, [np.nan if r[key] is None else r[key] for r in rows], label=key)
    at = result["at_threshold"]["threshold"]
    ax.axvline(at, color="k", lw=0.8, ls="--", label=f"threshold {at}")
    ax.set_xlabel("validator threshold (both scores ≥)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"against humans (positive: both > {result['human_positive_above']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def survival_curve(result: dict[str, Any]) -> Figure:
    """Share surviving against the threshold, the cliffs and the chosen threshold (Fig. C.5)."""
    curve = result["curve"]
    t = [r["threshold"] for r in curve]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(t, [r["share"] for r in curve], marker="o", ms=3, color=OURS)
    for c in result["cliffs"]:
        ax.axvline(c["threshold"], color=PAPER, lw=0.8)
        ax.text(
            c["threshold"],
            0.95,
            f" {c['threshold']}: −{100 * c['drop']:.1f} %",
            fontsize=8,
            color=PAPER,
            va="top",
        )
    if result["threshold"] is not None:
        ax.axvline(
            result["threshold"],
            color="k",
            ls="--",
            lw=1,
            label=f"chosen threshold {result['threshold']}",
        )
        ax.legend(fontsize=8, loc="lower left")
    ax.set_xlabel("threshold (both scores ≥)")
    ax.set_ylabel("share of candidates surviving")
    ax.set_ylim(0, 1.02)
    ax.set_title("survival curve of the hard validator")
    fig.tight_layout()
    return fig


def ablations(table: Any) -> Figure:
    """Yield and precision per variant, grouped by parameter, the base run first."""
    rows = table.to_dict("records")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    labels = [r["variant"] for r in rows]
    y = np.arange(len(rows))
    for ax, key, title in zip(
        axes,
        ("yield", "precision", "calls_per_accepted"),
        ("yield (accepted / edits)", "precision vs truth", "validator calls per accepted"),
        strict=True,
    ):
        values = [np.nan if r[key] is None or _nan(r[key]) else r[key] for r in rows]
        colours = [PAPER if r["parameter"] == "base" else OURS for r in rows]
        ax.barh(y, values, color=colours)
        for yi, v in zip(y, values, strict=True):
            if not np.isnan(v):
                ax.text(v, yi, f" {v:.3g}", va="center", fontsize=8)
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(labels))
        ax.invert_yaxis()
        ax.set_title(title)
    fig.suptitle("ablations on the synthetic world (orange: the base run)")
    fig.tight_layout()
    return fig


def judges_side_by_side(rows: Sequence[dict[str, Any]]) -> Figure:
    """Judges on the same ratings: precision (solid) and recall (dashed) against the
    threshold, one colour per judge, and their MAE and Spearman ρ of adherence as bars."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=(3, 2))
    for i, row in enumerate(rows):
        colour = f"C{i}"
        grid = row["vs_threshold"]
        t = [r["threshold"] for r in grid]
        for key, style in (("precision", "-"), ("recall", "--")):
            ys = [np.nan if r[key] is None else r[key] for r in grid]
            ax.plot(t, ys, style, color=colour, label=f"{row['judge_id']} {key}")
    if rows:
        ax.axvline(rows[0]["threshold"], color="k", lw=0.8, ls=":")
    ax.axhline(0.9, color="grey", lw=0.6)
    ax.set_xlabel("threshold (both scores ≥)")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision and recall against humans")
    ax.legend(fontsize=6)
    x = np.arange(len(rows))
    for j, (key, label) in enumerate(
        (("mae_adherence", "MAE adherence"), ("spearman_adherence", "ρ adherence"))
    ):
        vals = [np.nan if r[key] is None else r[key] for r in rows]
        bx.bar(x + (j - 0.5) * 0.38, vals, 0.38, label=label)
    bx.set_xticks(x, [str(r["judge_id"])[:28] for r in rows], rotation=20, ha="right", fontsize=7)
    bx.legend(fontsize=8)
    bx.set_title("error and rank agreement")
    fig.tight_layout()
    return fig
