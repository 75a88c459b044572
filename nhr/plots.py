"""The figures of a run: funnel beside the paper's, score histograms, edit-type and
resolution distributions, and sample grids of (source | edit) with instruction and scores.

Every function returns a matplotlib Figure; ``save`` writes it to ``<run>/plots/``.
"""

from __future__ import annotations

import io
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhr.store import BlobStore, open_files

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> Any:
    """matplotlib's pyplot, imported on first use: a notebook that draws nothing does not
    pay its second of start-up."""
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, run_dir: Path | str, name: str) -> Path | str:
    """Save a figure as ``<run>/plots/<name>.png`` (the run a folder or an object-store
    URL) and return its path or URL."""
    files = open_files(run_dir)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    files.write_bytes(f"plots/{name}.png", buf.getvalue())
    return files.local_path(f"plots/{name}.png") or files.describe(f"plots/{name}.png")


def funnel(ours: Sequence[dict[str, Any]], paper: Sequence[dict[str, Any]]) -> Figure:
    """Rows after each stage (left) and each step's change, ours beside the paper's
    Table 2 (right)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.6))
    names = [r["stage"] for r in ours]
    ax1.barh(names[::-1], [r["rows"] for r in ours][::-1], color="#4C72B0")
    for i, r in enumerate(ours[::-1]):
        ax1.text(r["rows"], i, f" {r['rows']:,}", va="center", fontsize=8)
    ax1.set_xlabel("rows")
    ax1.set_title("funnel of this run")
    steps = [r for r in ours if "change" in r]
    y = list(range(len(steps)))
    ax2.barh(
        [i + 0.2 for i in y],
        [r["change"] for r in steps],
        height=0.4,
        label="this run",
        color="#4C72B0",
    )
    ax2.barh(
        [i - 0.2 for i in y],
        [r.get("paper_change", float("nan")) for r in steps],
        height=0.4,
        label="paper (Table 2)",
        color="#DD8452",
    )
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_yticks(y, [r["stage"].removeprefix("after ") for r in steps])
    ax2.invert_yaxis()
    ax2.set_xlabel("change in rows at this step")
    ax2.set_title("each step, this run vs the paper")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def score_histograms(verdicts: Sequence[Any], threshold: float) -> Figure:
    """Histograms of the hard validator's two scores, with the pass threshold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, field, label in zip(
        axes, ("adherence", "aesthetic"), ("InstructionAdherence", "ImageAesthetic"), strict=True
    ):
        values = [getattr(v, field) for v in verdicts if getattr(v, field) is not None]
        ax.hist(values, bins=40, range=(1, 5), color="#55A868")
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold}")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("candidates")
    fig.suptitle(f"hard validator scores ({len(verdicts)} candidates)")
    fig.tight_layout()
    return fig


def edit_types(candidates: Sequence[Any], triplets: Sequence[Any]) -> Figure:
    """Exported triplets per edit type, and the share of candidates of each type that
    became a triplet."""
    gen = Counter(c.edit_type for c in candidates)
    got = Counter(t.edit_type for t in triplets)
    types = sorted(gen, key=lambda t: -got.get(t, 0))
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax1.bar(types, [got.get(t, 0) for t in types], color="#8172B3")
    ax1.set_ylabel("triplets")
    ax1.set_title("triplets by edit type")
    ax2.bar(types, [got.get(t, 0) / gen[t] for t in types], color="#937860")
    ax2.set_ylabel("triplets per generated edit")
    ax2.set_title("yield by edit type")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def resolutions(rows: Sequence[Any]) -> Figure:
    """Width × height of images, with aspect-ratio guides."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ws, hs = [r.width for r in rows], [r.height for r in rows]
    ax.scatter(ws, hs, s=8, alpha=0.5)
    top = max(ws + hs + [1])
    for ratio in (1, 2, 4, 6):
        ax.plot([0, top], [0, top / ratio], color="0.8", lw=0.8)
        ax.plot([0, top / ratio], [0, top], color="0.8", lw=0.8)
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"resolutions ({len(rows)} images)")
    fig.tight_layout()
    return fig


def sample_grid(
    blobs: BlobStore,
    rows: Sequence[Any],
    scores: dict[str, tuple[float | None, float | None, str]] | None = None,
    columns: int = 3,
) -> Figure:
    """A grid of (source | edit) pairs titled with the instruction and the scores.

    ``rows`` are records with ``source_image``/``image`` (candidates) or
    ``source_image``/``edited_image`` (triplets); ``scores`` maps a row's id to
    (adherence, aesthetic, verdict reason).
    """
    n = max(1, len(rows))
    nrows = -(-n // columns)
    plt = _pyplot()
    fig, axes = plt.subplots(
        nrows, columns * 2, figsize=(columns * 4.4, nrows * 2.6), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(rows):
        r, c = divmod(i, columns)
        edited = getattr(row, "edited_image", None) or row.image
        axes[r][2 * c].imshow(blobs.get(row.source_image))
        axes[r][2 * c + 1].imshow(blobs.get(edited))
        title = textwrap.shorten(row.instruction, 70)
        if hasattr(row, "origin"):
            title = f"[{row.origin}] {title}"
        if scores and row.id in scores:
            adh, aes, reason = scores[row.id]
            if adh is not None and aes is not None:
                title += f"\nadh {adh:.2f} · aes {aes:.2f} · {reason}"
            else:
                title += f"\n{reason}"
        elif hasattr(row, "adherence"):
            title += f"\nadh {row.adherence:.2f} · aes {row.aesthetic:.2f}"
        axes[r][2 * c].set_title("source", fontsize=8)
        axes[r][2 * c + 1].set_title(textwrap.fill(title, 40), fontsize=8)
    fig.tight_layout()
    return fig


def source_grid(
    blobs: BlobStore, sources: Sequence[Any], verdicts: Sequence[Any], columns: int = 4
) -> Figure:
    """Source images titled with the gate's verdict, their size and their prompt."""
    reasons = {v.subject_id: v.reason for v in verdicts}
    titles = [
        f"{reasons.get(s.source_id, 'not judged')} · {s.width}x{s.height} · {s.prompt}"
        for s in sources
    ]
    return image_grid(blobs, [s.image for s in sources], titles, columns)


def image_grid(
    blobs: BlobStore, images: Sequence[str], titles: Sequence[str], columns: int = 4
) -> Figure:
    """Single images (e.g. sources) in a grid, each with a title."""
    n = max(1, len(images))
    nrows = -(-n // columns)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, columns, figsize=(columns * 3.2, nrows * 2.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (rel, title) in enumerate(zip(images, titles, strict=True)):
        ax = axes[i // columns][i % columns]
        ax.imshow(blobs.get(rel))
        ax.set_title(textwrap.fill(textwrap.shorten(title, 110), 36), fontsize=7)
    fig.tight_layout()
    return fig


def search_rounds(mining: dict[str, Any]) -> Figure:
    """Per round of the mining loop (``stats/mining.json``): groups still open, jobs run
    and groups closed by a pass or as hopeless."""
    plt = _pyplot()
    rounds = mining.get("rounds", [])
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(x, [r["groups_open"] for r in rounds], "o-", label="groups open", color="#4C72B0")
    ax.plot(x, [r["jobs"] for r in rounds], "s--", label="jobs", color="#8172B2")
    ax.bar(
        [i - 0.15 for i in x],
        [r["closed_passed"] for r in rounds],
        width=0.3,
        label="closed: passed",
        color="#55A868",
    )
    ax.bar(
        [i + 0.15 for i in x],
        [r["closed_hopeless"] for r in rounds],
        width=0.3,
        label="closed: hopeless",
        color="#C44E52",
    )
    ax.set_xticks(x)
    ax.set_xlabel("round")
    ax.set_ylabel("groups / jobs")
    ax.set_title(f"candidate search ({mining.get('search', '?')})")
    ax.legend(fontsize=8)
    return fig
