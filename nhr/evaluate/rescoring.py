"""Several judges on the same rated items of a run, for calibration side by side.

Each judge is named by a spec (``EVAL_JUDGES``): ``validator`` is the evaluated run's
own validator (its table's scores, no new calls); anything else is a judge spec as the
ensemble takes it (a validator backend, ``NAME:MODEL``, ``synthetic:noise=X``), built
fresh and run on the rated candidates' images. Remote judges go through the client
layer with its request cache in the evaluation run's folder, so a rerun costs nothing.
The comparison runs on the items every judge scored without error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhr.config import PipelineConfig
from nhr.errors import NhrError
from nhr.evaluate.calibration import Rating, judges_side_by_side, validator_scores
from nhr.store.files import location

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline

OWN = "validator"


def own_judge_id(pipe: Pipeline) -> str:
    """The judge id of a run's validator table (the first scored row's)."""
    for v in pipe.rows("validator"):
        return str(v.judge_id)
    raise NhrError(f"{pipe.store.root} has no validator verdicts", "run 05_validate first")


def score_items(
    pipe: Pipeline,
    judge: Any,
    ids: set[str],
    batch_size: int = 16,
) -> dict[str, tuple[float, float]]:
    """A judge's (adherence, aesthetic) of the run's candidates in ``ids`` (errors left
    out)."""
    rows = sorted(
        (c for c in pipe.rows("candidates") if c.candidate_id in ids), key=lambda c: c.candidate_id
    )
    blobs = pipe.store.blobs
    out: dict[str, tuple[float, float]] = {}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        scores = judge.score(
            [blobs.get(c.source_image) for c in batch],
            [blobs.get(c.image) for c in batch],
            [c.instruction for c in batch],
        )
        for c, s in zip(batch, scores, strict=True):
            if s.error is None:
                out[c.candidate_id] = (float(s.adherence), float(s.aesthetic))
    return out


def judges_scores(
    pipe: Pipeline,
    specs: Sequence[str],
    ids: set[str],
    cfg: PipelineConfig,
    run_dir: Path | str,
) -> dict[str, dict[str, tuple[float, float]]]:
    """judge id → scores of the rated items, for each spec (see the module docstring)."""
    from nhr.backends.api_client import RemoteClient
    from nhr.backends.judge_ensemble import build_judge
    from nhr.backends.registry import REGISTRY, BuildContext

    ctx = BuildContext(cfg, location(run_dir))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for spec in specs:
            if spec == OWN:
                own = validator_scores(pipe.tables)
                out[own_judge_id(pipe)] = {i: own[i] for i in ids if i in own}
                continue
            judge = build_judge(ctx, spec, REGISTRY["validator"])
            out[judge.judge_id] = score_items(pipe, judge, ids, cfg.run.batch_size)
    finally:
        for obj in ctx._shared.values():
            if isinstance(obj, RemoteClient):
                obj.close()
    return out


def side_by_side(
    pipe: Pipeline,
    specs: Sequence[str],
    ratings: Sequence[Rating],
    cfg: PipelineConfig,
    run_dir: Path | str,
) -> list[dict[str, Any]]:
    """The judges of ``specs`` calibrated on the same ratings (items all of them scored)."""
    ids = {r.item_id for r in ratings}
    scores = judges_scores(pipe, specs, ids, cfg, run_dir)
    common = set(ids)
    for s in scores.values():
        common &= set(s)
    kept = [r for r in ratings if r.item_id in common]
    return judges_side_by_side(
        scores, kept, cfg.validation.threshold, cfg.evaluation.eval_human_positive
    )
