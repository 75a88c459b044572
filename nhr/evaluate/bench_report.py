"""What a researcher puts in a paper from an editor benchmark: scores with intervals.

From the rows ``run_bench`` made: one result per (editor, set, judge) with the judge's
own scores (GEdit-Bench: SC, PQ and O = √(SC·PQ) on 0–10; a validator: 1–5 adherence,
aesthetic, √ of both), each with a bootstrap 95 % interval, per task type, on
GEdit-Bench's ``Intersection_exist`` subset where the set has one, and the mean of every
criterion the judge reports (ImgEdit's and KRIS's criteria); the truth of the synthetic
world where it knows the pictures (``truth_overall``: mean √(adh·aes) of the true 1–5
scores; ``truth_correct``: the share of truly correct edits) and the judge's agreement
with it (Spearman ρ over items); a paired comparison of every pair of editors on the
items both were scored on (mean difference, its interval, wins/ties/losses).

Means are over the items an editor was scored on: an item it failed to edit (the
editor raised) or the judge failed to score is counted (``failed``, ``judge_errors``)
and left out. The edited images are also written in GEdit-Bench's layout,
``<bench>/<set>/<method>/fullset/<task_type>/<lang>/<key>.png``, so its own scorer reads
them.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nhr.seeds import derive_seed

from .editor_bench import BenchEdit, BenchRun, BenchScore, layout_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("overall", "sc", "pq", "adherence", "aesthetic")


def bootstrap_ci(
    values: Sequence[float], resamples: int = 1000, seed: object = 0
) -> list[float] | None:
    """The percentile bootstrap 95 % interval of the mean (None under two values)."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return None
    rng = np.random.default_rng(derive_seed("bootstrap", seed))
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr

    return round(float(spearmanr(a, b).statistic), 4)


def truth_scores(run: BenchRun, truth: Any, blobs: Any) -> dict[str, tuple[float, bool]]:
    """The true (√(adh·aes) on 1–5, correct) of each edit whose pictures the synthetic
    world knows, by job id (evaluation only: no judge sees it)."""
    if truth is None:
        return {}
    out: dict[str, tuple[float, bool]] = {}
    for e in run.edits:
        if e.error:
            continue
        try:
            t = truth.triplet(blobs.get(e.source_image), e.instruction, blobs.get(e.edited_image))
        except KeyError:
            continue
        out[e.job_id] = (math.sqrt(t.adherence * t.aesthetic), bool(t.correct))
    return out


def _block(rows: list[BenchScore], resamples: int, seed: object) -> dict[str, Any]:
    """Means and intervals of one group of scored rows."""
    out: dict[str, Any] = {"items": len(rows)}
    for m in METRICS:
        vals = [getattr(r, m) for r in rows if getattr(r, m) is not None]
        if not vals:
            continue
        out[m] = _mean(vals)
        if m in ("overall", "sc", "pq"):
            out[f"{m}_ci95"] = bootstrap_ci(vals, resamples, (seed, m))
    return out


def results(
    run: BenchRun,
    truth: dict[str, tuple[float, bool]] | None = None,
    resamples: int = 1000,
    standards: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One object per (editor, set, judge): see the module docstring."""
    import json

    truth = truth or {}
    edits = {e.job_id: e for e in run.edits}
    groups: dict[tuple[str, str, str], list[BenchScore]] = defaultdict(list)
    for s in run.scores:
        groups[(s.editor_id, s.set, s.judge_id)].append(s)
    order = {e.spec.editor_id: i for i, e in enumerate(run.editors)}
    models = {e.spec.editor_id: e for e in run.editors}
    out = []
    for (eid, set_name, jid), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][1], kv[0][2], order.get(kv[0][0], 0))
    ):
        ok = [r for r in rows if r.error is None]
        failed = sum(1 for r in rows if r.error and r.error.startswith("edit_failed"))
        key = (eid, set_name, jid)
        res: dict[str, Any] = {
            "editor_id": eid,
            "model_id": next((edits[r.job_id].model_id for r in rows if r.job_id in edits), ""),
            "steps": models[eid].steps if eid in models else None,
            "guidance": models[eid].guidance if eid in models else None,
            "set": set_name,
            "benchmark": (standards or {}).get(set_name, "nhr"),
            "judge_id": jid,
            "judge_model": rows[0].judge_model,
            "prompt_version": rows[0].prompt_version,
            "scale": next((r.scale for r in ok), ""),
            "items": len(rows),
            "scored": len(ok),
            "failed": failed,
            "judge_errors": len(rows) - len(ok) - failed,
        }
        block = _block(ok, resamples, key)
        block.pop("items")
        res.update(block)
        res.setdefault("overall", None)
        res.setdefault("overall_ci95", None)
        res["ci95"] = res.pop("overall_ci95")
        by_task: dict[str, list[BenchScore]] = defaultdict(list)
        for r in ok:
            by_task[r.task_type].append(r)
        res["by_task"] = {t: _block(v, resamples, (key, t)) for t, v in sorted(by_task.items())}
        inter = [r for r in ok if r.intersection]
        if inter:
            res["intersection"] = _block(inter, resamples, (key, "intersection"))
        crit: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            for name, value in json.loads(r.criteria).items():
                crit[name].append(float(value))
        res["criteria"] = {k: _mean(v) for k, v in sorted(crit.items())}
        known = [truth[r.job_id] for r in ok if r.job_id in truth]
        if ok and len(known) == len(ok):
            res["truth_overall"] = _mean([k[0] for k in known])
            res["truth_correct"] = _mean([float(k[1]) for k in known])
            res["truth_agreement_spearman"] = _spearman(
                [r.overall for r in ok],
                [k[0] for k in known],  # type: ignore[misc]
            )
        else:
            res["truth_overall"] = None
        out.append(res)
    return out


def paired(run: BenchRun, resamples: int = 1000) -> list[dict[str, Any]]:
    """Every pair of editors, per (set, judge): the mean difference of ``overall`` on the
    items both were scored on, its bootstrap 95 % interval, and wins/ties/losses."""
    by: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for s in run.scores:
        if s.error is None and s.overall is not None:
            by[(s.set, s.judge_id)][s.editor_id][s.item_id] = s.overall
    ids = [e.spec.editor_id for e in run.editors]
    out = []
    for (set_name, jid), per in sorted(by.items()):
        for a, b in combinations([i for i in ids if i in per], 2):
            common = sorted(set(per[a]) & set(per[b]))
            d = [per[a][i] - per[b][i] for i in common]
            out.append(
                {
                    "set": set_name,
                    "judge_id": jid,
                    "a": a,
                    "b": b,
                    "items": len(common),
                    "mean_difference": _mean(d),
                    "ci95": bootstrap_ci(d, resamples, (set_name, jid, a, b)),
                    "a_wins": sum(x > 0 for x in d),
                    "ties": sum(x == 0 for x in d),
                    "b_wins": sum(x < 0 for x in d),
                }
            )
    return out


def rankings(res: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Editors by ``overall``, best first, per ``set | judge``."""
    groups: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in res:
        if r["overall"] is not None:
            groups[f"{r['set']} | {r['judge_id']}"].append((r["overall"], r["editor_id"]))
    return {k: [e for _, e in sorted(v, key=lambda t: (-t[0], t[1]))] for k, v in groups.items()}


def table(res: list[dict[str, Any]]) -> Any:
    """The results as a DataFrame: one row per (set, judge, editor), the paper's columns."""
    import pandas as pd

    cols = [
        "set",
        "judge_id",
        "editor_id",
        "items",
        "scored",
        "failed",
        "overall",
        "ci95",
        "sc",
        "pq",
        "truth_overall",
        "truth_correct",
        "truth_agreement_spearman",
    ]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in res])


def write_layout(run: BenchRun, blobs: Any, root: Path | str) -> int:
    """Write every edited image at GEdit-Bench's path under ``root/<set>/``; returns how
    many files were written (one already there with the same bytes is kept)."""
    slugs = {e.spec.editor_id: e.spec.slug for e in run.editors}
    written = 0
    for e in run.edits:
        if e.error:
            continue
        path = layout_path(Path(root) / e.set, slugs[e.editor_id], _safe(e))
        data = blobs.read_bytes(e.edited_image)
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written += 1
    return written


def _safe(e: BenchEdit) -> BenchEdit:
    """The edit with a key and task type usable as file names."""
    from dataclasses import replace

    clean = lambda s: s.replace("/", "_").replace("\\", "_") or "_"  # noqa: E731
    return replace(e, item_key=clean(e.item_key), task_type=clean(e.task_type))


# ---------------------------------------------------------------- figures
def task_bars(res: list[dict[str, Any]], set_name: str, judge_id: str) -> Figure:
    """Overall per task type, editors side by side (with 95 % intervals), one set/judge."""
    from nhr.plots import _pyplot

    plt = _pyplot()
    mine = [r for r in res if r["set"] == set_name and r["judge_id"] == judge_id]
    tasks = sorted({t for r in mine for t in r["by_task"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 4.2))
    width = 0.8 / max(1, len(mine))
    for k, r in enumerate(mine):
        xs = np.arange(len(tasks)) + k * width
        ys = [r["by_task"].get(t, {}).get("overall") or 0.0 for t in tasks]
        cis = [r["by_task"].get(t, {}).get("overall_ci95") for t in tasks]
        err = np.array(
            [[y - c[0], c[1] - y] if c else [0.0, 0.0] for y, c in zip(ys, cis, strict=True)]
        ).T
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=f"{r['editor_id']} ({r['overall']})")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right")
    ax.set_ylabel("overall" + (" (0–10)" if mine and mine[0]["scale"].startswith("vie") else ""))
    ax.set_title(f"{set_name}: overall per task type ({judge_id})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_grid(run: BenchRun, blobs: Any, set_name: str, judge_id: str, n_items: int = 4) -> Figure:
    """A few items: source | each editor's edit, titled with its score."""
    from nhr.plots import _pyplot

    plt = _pyplot()
    ids = [e.spec.editor_id for e in run.editors]
    edits = {(e.editor_id, e.item_id): e for e in run.edits if e.set == set_name}
    scores = {(s.editor_id, s.item_id): s for s in run.scores if s.judge_id == judge_id}
    items = run.items.get(set_name, [])[:n_items]
    cols = 1 + len(ids)
    fig, axes = plt.subplots(
        max(1, len(items)), cols, figsize=(cols * 2.6, max(1, len(items)) * 2.7), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i, it in enumerate(items):
        axes[i][0].imshow(blobs.get(it.source_image))
        axes[i][0].set_title(textwrap.fill(textwrap.shorten(it.instruction, 80), 32), fontsize=6)
        for j, eid in enumerate(ids, 1):
            e = edits.get((eid, it.item_id))
            if e is None:
                continue
            axes[i][j].imshow(blobs.get(e.edited_image))
            s = scores.get((eid, it.item_id))
            if s is None or s.error:
                label = "error" if s is not None else ""
            elif s.sc is not None:
                label = f"SC {s.sc:g} PQ {s.pq:g} O {s.overall:.2f}"
            else:
                label = f"{s.overall:.2f}"
            axes[i][j].set_title(f"{textwrap.shorten(eid, 28)}\n{label}", fontsize=6)
    fig.tight_layout()
    return fig


def write_bench(run: BenchRun, pipe: Any, truth: Any = None) -> dict[str, Any]:
    """``<run>/bench.json`` (results, paired comparisons, rankings, what was run) and
    the GEdit-Bench layout under ``<run>/bench/``; returns the JSON written."""
    from nhr.store import atomic_write_json

    from .bench_sets import parse_sets

    cfg, store = pipe.cfg, pipe.store
    ev = cfg.evaluation
    sets = parse_sets(ev.bench_sets, ev.eval_columns)
    standards = {s.name: s.standard for s in sets}
    truths = truth_scores(run, truth, store.blobs)
    res = results(run, truths, ev.bench_bootstrap, standards)
    root = Path(store.root)
    written = write_layout(run, store.blobs, root / "bench")
    data = {
        "results": res,
        "paired": paired(run, ev.bench_bootstrap),
        "rankings": rankings(res),
        "sets": {
            s.name: {
                "benchmark": s.standard,
                "location": s.location,
                "items": len(run.items[s.name]),
                "task_types": sorted({i.task_type for i in run.items[s.name]}),
            }
            for s in sets
        },
        "editors": [
            {
                "editor_id": e.spec.editor_id,
                "spec": e.spec.spec,
                "model_id": getattr(e.backend, "model_id", ""),
                "steps": e.steps,
                "guidance": e.guidance,
                "lora": e.spec.lora,
                "seed": "per item" if e.spec.seed is None else e.spec.seed,
                "layout": str(root / "bench" / "<set>" / e.spec.slug),
            }
            for e in run.editors
        ],
        "judges": [
            {
                "spec": spec,
                "judge_id": j.judge_id,
                "model": str(getattr(j, "model", "") or j.judge_id),
                "prompt_version": j.prompt_version,
            }
            for spec, j in run.judges.items()
        ],
        "max_items": ev.bench_max_items,
        "seed": ev.bench_seed,
        "bootstrap_resamples": ev.bench_bootstrap,
        "layout_files_written": written,
    }
    atomic_write_json(root / "bench.json", data)
    return data
