"""Benchmark editors the way the field does: any editor, any benchmark set, any judge.

``BENCH_EDITORS`` names editors by spec, ``NAME[:key=value,...][+lora=PATH]``:

- ``synthetic:skill=0.8``: the synthetic world's editor at a skill (share of edits it
  gets right; ``synthetic`` alone is the mining editor);
- ``flux-kontext:model=black-forest-labs/FLUX.1-Kontext-dev,steps=28,guidance=2.5``,
  ``qwen-image-edit:…``, ``instruct-pix2pix:…``: a registered editor with its model id,
  steps, guidance and seed (``seed=`` fixes one seed for every item; by default each
  item has its own seed, the same for every editor, so editors are compared on the same
  draws); ``+lora=PATH[@SCALE]`` passes a LoRA to the editor (``EDITOR_LORA``,
  ``EDITOR_LORA_SCALE``);
- ``label=NAME`` in any spec names the editor in tables and in the output layout.

``BENCH_JUDGES`` names judges: ``synthetic-viescore[:noise=X]`` (the synthetic judge in
VIEScore's SC/PQ shape) or any validator spec (``gemini-viescore``,
``openai-viescore:MODEL``, ``openai-imgedit``, ``gemini``, ``synthetic:noise=X``), built
over the run's client layer (cache, limits, retries, error verdicts).

Everything goes through the runner: an (editor, item) is a row of the editor's own
``bench_edits_<id>`` table (edited images are blobs), a (judge, edit) a row of the
judge's ``bench_scores_<id>`` table, so a killed benchmark resumes to the same rows and a
rerun makes no model or judge call; adding an editor or a judge to a finished benchmark
runs only the new rows. ``nhr.evaluate.bench_report`` turns the rows into ``bench.json``,
tables, figures and GEdit-Bench's output layout.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nhr.errors import ConfigError
from nhr.records import Record, from_table
from nhr.seeds import derive_seed
from nhr.stages.base import Stage
from nhr.store import BlobStore

from .bench_sets import BenchItem

EDITS_PREFIX = "bench_edits_"
# numbers in a judge's details that describe the scale, not a criterion
NOT_CRITERIA = ("score_range", "range", "score")
SCORES_PREFIX = "bench_scores_"
EDITOR_KEYS = ("model", "steps", "guidance", "seed", "skill", "label")
# what an empty BENCH_EDITORS benchmarks: three synthetic editors of known, ordered skill
DEFAULT_EDITORS = ("synthetic:skill=0.3", "synthetic:skill=0.6", "synthetic:skill=0.9")


# ---------------------------------------------------------------- editor specs
@dataclass(frozen=True)
class EditorSpec:
    """One ``BENCH_EDITORS`` entry, parsed."""

    spec: str
    name: str
    model: str = ""
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    skill: float | None = None
    lora: str = ""
    label: str = ""

    @property
    def editor_id(self) -> str:
        """How tables, figures and the output layout name the editor."""
        return self.label or self.spec

    @property
    def slug(self) -> str:
        """A file-safe form of the id: the method folder of GEdit-Bench's layout."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.editor_id)
        return safe.strip("_") or "editor"

    @property
    def table(self) -> str:
        """The editor's own table of edits."""
        return EDITS_PREFIX + hashlib.sha256(self.spec.encode()).hexdigest()[:12]


def parse_editor(spec: str) -> EditorSpec:
    """``NAME[:key=value,...][+lora=PATH]`` → an ``EditorSpec`` (errors name the fix)."""
    from nhr.backends import names

    text = spec.strip()
    body, _, lora_part = text.partition("+")
    lora = ""
    if lora_part:
        key, _, lora = lora_part.partition("=")
        if key.strip() != "lora" or not lora.strip():
            raise ConfigError(f"editor spec {spec!r}", "write +lora=PATH after the editor")
        lora = lora.strip()
    name, _, args = body.partition(":")
    name = name.strip()
    if name not in names.known("editor"):
        raise ConfigError(
            f"editor spec {spec!r}: unknown editor {name!r}",
            f"use one of: {', '.join(names.known('editor'))}",
        )
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, eq, value = (p.strip() for p in part.partition("="))
        if not eq or key not in EDITOR_KEYS:
            raise ConfigError(
                f"editor spec {spec!r}: {part!r}", f"write key=value with a key of {EDITOR_KEYS}"
            )
        try:
            if key in ("steps", "seed"):
                values[key] = int(value)
            elif key in ("guidance", "skill"):
                values[key] = float(value)
            else:
                values[key] = value
        except ValueError:
            raise ConfigError(f"editor spec {spec!r}: {key}={value!r}", "give a number") from None
    if "skill" in values and (name != "synthetic" or not 0.0 <= values["skill"] <= 1.0):
        raise ConfigError(
            f"editor spec {spec!r}: skill", "skill=X (0..1) is a knob of the synthetic editor"
        )
    return EditorSpec(text, name, lora=lora, **values)


@dataclass
class BenchEditor:
    """A built editor with the steps, guidance and seed rule its spec gives."""

    spec: EditorSpec
    backend: Any
    steps: int
    guidance: float

    def seed_for(self, item_id: str, base_seed: int) -> int:
        """The item's seed: the spec's fixed seed, else one per item (same for every
        editor, so editors are compared on the same draws)."""
        if self.spec.seed is not None:
            return self.spec.seed
        return derive_seed("bench-edit", base_seed, item_id) % (2**31)


def build_editor(spec: EditorSpec, ctx: Any) -> BenchEditor:
    """The editor a spec names, built through the editor registry with the spec's model
    (and LoRA) in the config; the synthetic editor at a skill level directly."""
    from nhr.backends.registry import REGISTRY, BuildContext, synthetic_world
    from nhr.config import FIELDS

    cfg = ctx.cfg
    steps = spec.steps or cfg.edits.edit_steps_max
    guidance = cfg.edits.edit_guidance[0] if spec.guidance is None else spec.guidance
    if spec.name == "synthetic" and spec.skill is not None:
        from nhr.backends.synthetic.editor import SyntheticEditor

        world = synthetic_world(ctx)
        backend = SyntheticEditor(world.truth, cfg.synthetic.synthetic_hard_share, spec.skill)
        return BenchEditor(spec, backend, steps, guidance)
    params: dict[str, Any] = {"EDITOR": spec.name}
    if spec.model:
        params["EDITOR_MODEL"] = spec.model
    if spec.lora:
        if "editor_lora" not in FIELDS:
            raise ConfigError(
                f"editor spec {spec.spec!r} asks for a LoRA, which this nhr's editors do "
                "not load (no EDITOR_LORA)",
                "update nhr, or benchmark the editor without +lora=",
            )
        path, at, scale = spec.lora.rpartition("@")
        try:
            params["EDITOR_LORA_SCALE"] = float(scale) if at else 1.0
            params["EDITOR_LORA"] = path if at else spec.lora
        except ValueError:
            params["EDITOR_LORA"] = spec.lora
        if "editor_lora_scale" not in FIELDS:
            params.pop("EDITOR_LORA_SCALE")
    sub = BuildContext(cfg.replace(**params), ctx.run_dir, ctx._shared)
    return BenchEditor(spec, REGISTRY["editor"][spec.name](sub), steps, guidance)


# ---------------------------------------------------------------- judge specs
def judge_table(judge_spec: str) -> str:
    """The judge's own table of scores."""
    return SCORES_PREFIX + hashlib.sha256(judge_spec.strip().encode()).hexdigest()[:12]


def build_bench_judge(spec: str, ctx: Any) -> Any:
    """The judge a ``BENCH_JUDGES`` entry names (see the module docstring).

    A judge whose verdict ``details`` hold ``sc``, ``pq`` and ``overall`` (0–10) is read
    as a VIEScore judge (GEdit-Bench's SC, PQ, O); any other as a validator (1–5
    adherence and aesthetic, overall √(adh·aes)); every other number it puts in
    ``details`` is kept as a per-criterion score (ImgEdit's and KRIS's criteria)."""
    from nhr.backends.judge_ensemble import build_judge
    from nhr.backends.registry import REGISTRY

    name, _, arg = spec.strip().partition(":")
    if name == "synthetic-viescore":
        from nhr.backends.synthetic.judge import SyntheticVIEScoreJudge

        noise = 1.0
        if arg:
            key, _, value = arg.partition("=")
            try:
                noise = float(value) if key == "noise" else -1.0
            except ValueError:
                noise = -1.0
            if not 0.0 <= noise <= 3.0:
                raise ConfigError(
                    f"judge spec {spec!r}", "write synthetic-viescore:noise=X with X in [0, 3]"
                )
        return SyntheticVIEScoreJudge(noise)
    return build_judge(ctx, spec, REGISTRY["validator"])


# ---------------------------------------------------------------- rows
@dataclass(frozen=True)
class BenchJob(Record):
    """One (editor, item) to edit, with its seed."""

    key: ClassVar[str] = "job_id"
    job_id: str  # "<editor_id>|<item_id>"
    editor_id: str
    item_id: str
    set: str
    item_key: str
    task_type: str
    language: str
    intersection: bool
    instruction: str
    source_image: str
    seed: int


@dataclass(frozen=True)
class BenchEdit(Record):
    """An editor's output on one item (``error``: the editor failed on it)."""

    key: ClassVar[str] = "job_id"
    job_id: str
    editor_id: str
    item_id: str
    set: str
    item_key: str
    task_type: str
    language: str
    intersection: bool
    instruction: str
    source_image: str
    edited_image: str
    model_id: str
    seed: int
    steps: int
    guidance: float
    seconds: float
    error: str | None


@dataclass(frozen=True)
class BenchScore(Record):
    """A judge's scores of one edit: ``overall`` on the judge's scale (0–10 for a
    VIEScore judge, 1–5 for a validator), SC and PQ where the judge gives them, every
    criterion in ``criteria`` (JSON), with the judge's id, model and prompt version."""

    key: ClassVar[str] = "score_id"
    score_id: str  # "<judge spec>|<job_id>"
    job_id: str
    editor_id: str
    item_id: str
    set: str
    task_type: str
    intersection: bool
    judge_id: str
    judge_model: str
    prompt_version: str
    scale: str  # "viescore-0-10" or "validator-1-5"
    overall: float | None
    sc: float | None
    pq: float | None
    adherence: float | None
    aesthetic: float | None
    criteria: str
    error: str | None


def jobs_for(editor: BenchEditor, items: list[BenchItem], base_seed: int) -> list[BenchJob]:
    """The (editor, item) rows of one editor over the items."""
    eid = editor.spec.editor_id
    return [
        BenchJob(
            job_id=f"{eid}|{it.item_id}",
            editor_id=eid,
            item_id=it.item_id,
            set=it.set,
            item_key=it.item_key,
            task_type=it.task_type,
            language=it.language,
            intersection=it.intersection,
            instruction=it.instruction,
            source_image=it.source_image,
            seed=editor.seed_for(it.item_id, base_seed),
        )
        for it in items
    ]


# ---------------------------------------------------------------- stages
class BenchEditStage(Stage[BenchJob, BenchEdit]):
    """One editor over benchmark items: the edited image of each, stored as a blob.

    An item the editor fails on (it raises) becomes a row with ``error`` set and the
    source as its image; the judge stage gives it no score (counted as failed)."""

    input_type = BenchJob
    output_type = BenchEdit
    backend_fields = ("backend",)

    def __init__(self, editor: BenchEditor, blobs: BlobStore) -> None:
        self.editor = editor
        self.backend = editor.backend  # what engines place: a device model or the CPU world
        self.blobs = blobs
        self.name = editor.spec.table  # type: ignore[misc]

    def own_settings(self) -> dict[str, Any]:
        e = self.editor
        return {
            "editor": e.spec.spec,
            "model_id": getattr(e.backend, "model_id", ""),
            "steps": e.steps,
            "guidance": e.guidance,
        }

    def process_batch(self, rows: list[BenchJob]) -> list[BenchEdit]:
        """Edit the batch in one call; a batch that fails is retried item by item, so
        one bad item is one error row."""
        import time

        images = [self.blobs.get(r.source_image) for r in rows]
        e = self.editor
        t0 = time.perf_counter()
        try:
            outs: list[Any] = e.backend.edit(
                images,
                [r.instruction for r in rows],
                [r.seed for r in rows],
                [e.steps] * len(rows),
                e.guidance,
            )
            each = (time.perf_counter() - t0) / max(1, len(rows))
            results = [(out, None, each) for out in outs]
        except Exception:  # one item may have sunk the batch: find it
            results = []
            for r, im in zip(rows, images, strict=True):
                t1 = time.perf_counter()
                try:
                    out = e.backend.edit([im], [r.instruction], [r.seed], [e.steps], e.guidance)[0]
                    results.append((out, None, time.perf_counter() - t1))
                except Exception as err:
                    results.append((im, f"{type(err).__name__}: {str(err)[:300]}", 0.0))
        model = getattr(e.backend, "model_id", e.spec.name)
        return [
            BenchEdit(
                job_id=r.job_id,
                editor_id=r.editor_id,
                item_id=r.item_id,
                set=r.set,
                item_key=r.item_key,
                task_type=r.task_type,
                language=r.language,
                intersection=r.intersection,
                instruction=r.instruction,
                source_image=r.source_image,
                edited_image=r.source_image if err else self.blobs.put(out),
                model_id=model,
                seed=r.seed,
                steps=e.steps,
                guidance=e.guidance,
                seconds=round(sec, 4),
                error=err,
            )
            for r, (out, err, sec) in zip(rows, results, strict=True)
        ]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class BenchJudgeStage(Stage[BenchEdit, BenchScore]):
    """One judge over edits of any editor: SC, PQ, O (VIEScore judges) or 1–5 scores."""

    input_type = BenchEdit
    output_type = BenchScore
    backend_fields = ("judge",)

    def __init__(self, judge: Any, blobs: BlobStore, spec: str) -> None:
        self.judge = judge
        self.blobs = blobs
        self.spec = spec
        self.name = judge_table(spec)  # type: ignore[misc]

    def own_settings(self) -> dict[str, Any]:
        return {
            "judge": self.judge.judge_id,
            "prompt_version": self.judge.prompt_version,
            "spec": self.spec,
        }

    def process_batch(self, rows: list[BenchEdit]) -> list[BenchScore]:
        """Score the edits that exist; a failed edit gets an error row, no judge call."""
        todo = [r for r in rows if r.error is None]
        scores = iter(
            self.judge.score(
                [self.blobs.get(r.source_image) for r in todo],
                [self.blobs.get(r.edited_image) for r in todo],
                [r.instruction for r in todo],
            )
            if todo
            else []
        )
        model = str(getattr(self.judge, "model", "") or self.judge.judge_id)
        out = []
        for r in rows:
            s = None if r.error else next(scores)
            out.append(self._row(r, s, model))
        return out

    def _row(self, r: BenchEdit, s: Any, model: str) -> BenchScore:
        base = {
            "score_id": f"{self.spec}|{r.job_id}",
            "job_id": r.job_id,
            "editor_id": r.editor_id,
            "item_id": r.item_id,
            "set": r.set,
            "task_type": r.task_type,
            "intersection": r.intersection,
            "judge_id": self.judge.judge_id,
            "judge_model": model,
            "prompt_version": self.judge.prompt_version,
        }
        empty = {"overall": None, "sc": None, "pq": None, "adherence": None, "aesthetic": None}
        if s is None:
            return BenchScore(
                **base, scale="", **empty, criteria="{}", error=f"edit_failed: {r.error}"
            )
        if s.error:
            return BenchScore(**base, scale="", **empty, criteria="{}", error=str(s.error))
        details = dict(s.details or {})
        criteria = {
            k: v for k, v in details.items() if _number(v) is not None and k not in NOT_CRITERIA
        }
        sc, pq = _number(details.get("sc")), _number(details.get("pq"))
        overall = _number(details.get("overall"))
        if sc is not None and pq is not None:
            scale = "viescore-0-10"
            if overall is None:
                overall = round(math.sqrt(max(sc, 0.0) * max(pq, 0.0)), 4)
        else:  # a validator's 1–5 scores; a judge's own overall (ImgEdit: the criteria's mean)
            scale = "validator-1-5"
            if overall is None:
                overall = round(math.sqrt(max(s.adherence, 0.0) * max(s.aesthetic, 0.0)), 4)
        return BenchScore(
            **base,
            scale=scale,
            overall=overall,
            sc=sc,
            pq=pq,
            adherence=float(s.adherence),
            aesthetic=float(s.aesthetic),
            criteria=json.dumps(criteria, sort_keys=True),
            error=None,
        )


# ---------------------------------------------------------------- running
@dataclass
class BenchRun:
    """What a benchmark ran: items per set, the built editors and judges, and the rows."""

    items: dict[str, list[BenchItem]]
    editors: list[BenchEditor]
    judges: dict[str, Any]
    edits: list[BenchEdit]
    scores: list[BenchScore]


def run_bench(pipe: Any) -> BenchRun:
    """Read the sets, edit every item with every editor, score every edit with every
    judge, all through the pipeline's runner (resumable; cached judges make no call on
    a rerun). Returns the rows for ``bench_report``."""
    from nhr.backends.registry import synthetic_world
    from nhr.images import ImageLimits

    from .bench_sets import load_set, parse_sets

    cfg, store = pipe.cfg, pipe.store
    ev = cfg.evaluation
    ctx = pipe.backends.ctx
    sets = parse_sets(ev.bench_sets, ev.eval_columns)
    world = synthetic_world(ctx) if any(s.kind == "synthetic" for s in sets) else None
    items = {
        s.name: load_set(
            s,
            store,
            store.blobs,
            ev.bench_max_items,
            ev.bench_seed,
            ev.bench_languages,
            ev.bench_subset,
            ImageLimits.from_config(cfg),
            world,
            (cfg.sources.long_side_min, cfg.sources.long_side_max),
        )
        for s in sets
    }
    every = [it for s in sets for it in items[s.name]]
    specs = [parse_editor(e) for e in ev.bench_editors or DEFAULT_EDITORS]
    ids = [s.editor_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"BENCH_EDITORS repeats an editor: {ids}", "give each a label=NAME")
    editors = [build_editor(s, ctx) for s in specs]
    edits: list[BenchEdit] = []
    for editor in editors:
        stage = BenchEditStage(editor, store.blobs)
        pipe.runner.run(stage, jobs_for(editor, every, ev.bench_seed))
        edits += from_table(store.tables.read(stage.name, BenchEdit.schema()), BenchEdit)
    wanted = {f"{e.spec.editor_id}|{it.item_id}" for e in editors for it in every}
    edits = sorted((e for e in edits if e.job_id in wanted), key=lambda e: e.job_id)
    judges = {spec: build_bench_judge(spec, ctx) for spec in ev.bench_judges}
    scores: list[BenchScore] = []
    for spec, judge in judges.items():
        stage = BenchJudgeStage(judge, store.blobs, spec)
        pipe.runner.run(stage, edits)
        rows = from_table(store.tables.read(stage.name, BenchScore.schema()), BenchScore)
        scores += [r for r in rows if r.job_id in wanted]
    return BenchRun(items, editors, judges, edits, scores)


def layout_path(root: Path | str, method: str, edit: BenchEdit) -> Path:
    """GEdit-Bench's output path of an edit: ``<method>/fullset/<task>/<lang>/<key>.png``."""
    return Path(root) / method / "fullset" / edit.task_type / edit.language / f"{edit.item_key}.png"
