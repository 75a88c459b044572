"""The mining chain as one object: each method runs a stage through the runner.

Notebooks call one method per stage and show its result; tests call the same methods
in-process. Every method reads its input from the run's tables, so stages can be run
one at a time, in separate processes, and resumed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from nhr.backends.registry import Backends, build_backends
from nhr.bootstrap import Bootstrap
from nhr.config import PipelineConfig
from nhr.records import (
    CandidateRow,
    DraftRow,
    PromptRow,
    SourceRow,
    TripletRow,
    Verdict,
    from_table,
    to_table,
)
from nhr.runner import Runner, StageResult
from nhr.stages.dataset_card import provenance
from nhr.stages.edits import EditStage, plan_edit_jobs
from nhr.stages.export import card_body, export_dataset
from nhr.stages.filters import LowLevelStage, PrefilterStage
from nhr.stages.gate import PlausibilityStage
from nhr.stages.photos import PhotoRow
from nhr.stages.preference import PreferencePair, preference_pairs
from nhr.stages.prompts import PromptStage, plan_prompt_jobs
from nhr.stages.sources import SourceStage
from nhr.stages.validator import ValidatorStage, select_argmax
from nhr.store import RunStore

TABLE_TYPES: dict[str, type] = {
    "prompts": PromptRow,
    "sources": SourceRow,
    "plausibility": Verdict,
    "candidates": CandidateRow,
    "prefilter": Verdict,
    "lowlevel": Verdict,
    "validator": Verdict,
    "mined": TripletRow,
    "inversion": DraftRow,
    "backward": Verdict,
    "composition": DraftRow,
    "composed_validator": Verdict,
    "triplets": TripletRow,
    "photos": PhotoRow,
}


# the table whose rows each verdict table judges
SUBJECTS = {
    "plausibility": "sources",
    "prefilter": "candidates",
    "lowlevel": "candidates",
    "validator": "candidates",
    "backward": "inversion",
    "composed_validator": "composition",
}

# every step of the chain in order, as Pipeline method paths
CHAIN = (
    "prompts",
    "sources",
    "gate",
    "edits",
    "prefilter",
    "lowlevel",
    "validate",
    "select",
    "bootstrap.invert",
    "bootstrap.backward",
    "bootstrap.compose",
    "bootstrap.validate_composed",
    "bootstrap.assemble",
    "export",
)


class Pipeline:
    """The chain over one run folder and one validated config."""

    def __init__(self, run_dir: Path | str, cfg: PipelineConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.store = RunStore(run_dir)
        self.runner = Runner(self.store, cfg.batch_size, cfg.workers, progress)
        self._backends: Backends | None = None
        self.bootstrap = Bootstrap(self)

    @classmethod
    def open(cls, run_dir: Path | str, params: dict[str, Any], progress: bool = True) -> Pipeline:
        """The pipeline of a run folder, reconciling ``params`` with its saved config."""
        from nhr.config import reconcile

        return cls(run_dir, reconcile(Path(run_dir), params), progress)

    @property
    def backends(self) -> Backends:
        """The configured backends, built on first use."""
        if self._backends is None:
            self._backends = build_backends(self.cfg, self.store.root)
        return self._backends

    # ---- reading -------------------------------------------------------------------
    def rows(self, table: str) -> list[Any]:
        """All records of a table."""
        cls = TABLE_TYPES[table]
        return from_table(self.store.tables.read(table, cls.schema()), cls)

    def frame(self, table: str) -> pd.DataFrame:
        """A table as a DataFrame, for looking at in a notebook."""
        return self.store.tables.read(table, TABLE_TYPES[table].schema()).to_pandas()

    def rejected(self, table: str, n: int) -> tuple[list[Any], dict[str, Any]]:
        """Up to ``n`` subjects a verdict table failed, and every subject's (adherence,
        aesthetic, reason) — what a notebook's sample grid of rejects takes."""
        verdicts = {v.subject_id: v for v in self.rows(table)}
        subjects = [
            r for r in self.rows(SUBJECTS[table]) if r.id in verdicts and not verdicts[r.id].passed
        ]
        scores = {k: (v.adherence, v.aesthetic, v.reason) for k, v in verdicts.items()}
        return subjects[:n], scores

    def passed_ids(self, table: str) -> set[str]:
        """Ids of the subjects a verdict table passed."""
        return {v.subject_id for v in self.rows(table) if v.passed}

    def filters(self) -> list[tuple[str, bool]]:
        """The candidate filters (verdict tables) in pipeline order, with whether each runs."""
        return [
            ("prefilter", self.cfg.prefilter),
            ("lowlevel", self.cfg.lowlevel),
            ("validator", True),
        ]

    def survivors(self, after: str) -> list[CandidateRow]:
        """Candidates that survive every enabled filter up to and including ``after``."""
        rows = self.rows("candidates")
        for name, enabled in self.filters():
            if enabled:
                keep = self.passed_ids(name)
                rows = [r for r in rows if r.candidate_id in keep]
            if name == after:
                break
        return rows

    def run_chain(self, until: str = "export") -> None:
        """Run every step of ``CHAIN`` in process, up to and including ``until`` (the
        notebooks run the same steps one by one; this is for scripts and tests)."""
        if until not in CHAIN:
            raise ValueError(f"unknown step {until!r}; steps: {', '.join(CHAIN)}")
        for step in CHAIN[: CHAIN.index(until) + 1]:
            target: Any = self
            for part in step.split("."):
                target = getattr(target, part)
            target()

    # ---- stages --------------------------------------------------------------------
    def prompts(self) -> StageResult:
        """Stage 1: write N_PROMPTS prompts with K_INSTRUCTIONS instructions each (with
        SOURCES photos: read and caption the photos, then K_INSTRUCTIONS per caption)."""
        if self.cfg.sources == "photos":
            return self.photo_prompts()
        stage = PromptStage(self.backends.prompter, self.cfg.k_instructions)
        return self.runner.run(stage, plan_prompt_jobs(self.cfg.n_prompts, self.cfg.seed))

    def sources(self) -> StageResult:
        """Stage 2: N_SOURCE_SEEDS source images per prompt (with SOURCES photos: the
        photo of each captioned prompt)."""
        if self.cfg.sources == "photos":
            return self.photo_sources()
        c = self.cfg
        stage = SourceStage(
            self.backends.t2i,
            self.store.blobs,
            c.n_source_seeds,
            (c.long_side_min, c.long_side_max),
            c.aspect_max,
            c.t2i_steps,
            c.t2i_guidance,
            c.seed,
        )
        return self.runner.run(stage, self.rows("prompts"))

    def gate(self) -> StageResult:
        """Stage 3: the plausibility gate over every source."""
        stage = PlausibilityStage(self.backends.gate_judge, self.store.blobs)
        return self.runner.run(stage, self.rows("sources"))

    def edit_jobs(self) -> list[Any]:
        """The scheduler's job list over the gated sources (seeded order, capped)."""
        c = self.cfg
        keep = self.passed_ids("plausibility")
        sources = [s for s in self.rows("sources") if s.source_id in keep]
        prompts = {p.prompt_id: p for p in self.rows("prompts")}
        return plan_edit_jobs(
            sources,
            prompts,
            c.m_edit_seeds,
            (c.edit_steps_min, c.edit_steps_max),
            c.edit_guidance,
            c.seed,
            c.max_edit_jobs,
        )

    def edits(self) -> StageResult:
        """Stage 4: M_EDIT_SEEDS edits per (gated source, instruction), within the budget."""
        jobs = self.edit_jobs()
        stage = EditStage(self.backends.editor, self.store.blobs)
        return self.runner.run(
            stage,
            jobs,
            budget_seconds=self.cfg.edit_budget_seconds,
            extra_stats={"grid_jobs": len(jobs)},
        )

    def prefilter(self) -> StageResult | None:
        """Stage 5: the soft pre-filter over every candidate (None when disabled)."""
        if not self.cfg.prefilter:
            return None
        stage = PrefilterStage(
            self.backends.prefilter_judge, self.store.blobs, self.cfg.prefilter_min_score
        )
        return self.runner.run(stage, self.rows("candidates"))

    def lowlevel(self) -> StageResult | None:
        """Stage 6: the low-level check over the pre-filter's survivors (None when disabled)."""
        if not self.cfg.lowlevel:
            return None
        stage = LowLevelStage(
            self.store.blobs, self.cfg.diff_threshold, self.cfg.min_component_share
        )
        return self.runner.run(stage, self.survivors("prefilter"))

    def validate(self) -> StageResult:
        """Stage 7: the hard validator over the survivors of the enabled filters."""
        stage = ValidatorStage(self.backends.validator, self.store.blobs, self.cfg.threshold)
        return self.runner.run(stage, self.survivors("lowlevel"))

    def select(self) -> StageResult:
        """Argmax selection per (source, instruction) → the ``mined`` table."""
        with self.runner.writing("selection"):
            return self._select()

    def _select(self) -> StageResult:
        """The body of ``select``, under the writer lock."""
        t0 = time.perf_counter()
        verdicts = self.rows("validator")
        triplets, drops = select_argmax(
            self.rows("candidates"),
            verdicts,
            {s.source_id: s for s in self.rows("sources")},
            {p.prompt_id: p for p in self.rows("prompts")},
        )
        self.store.tables.write_shard(
            "mined", "all", to_table(triplets, TripletRow), [], {"settings_hash": "whole-table"}
        )
        stats = {
            "stage": "mined",
            "rows_in": sum(v.passed for v in verdicts),
            "rows_out": len(triplets),
            "drops_by_reason": drops,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.store.write_stats("mined", stats)
        return StageResult("mined", triplets, stats)

    def triplets(self) -> list[TripletRow]:
        """The triplets the export writes: the bootstrapped, deduplicated ``triplets``
        table once ``bootstrap.assemble()`` has run, else the mined ones."""
        return self.rows("triplets" if self.store.tables.exists("triplets") else "mined")

    def preference_pairs(self, mined: list[TripletRow]) -> list[PreferencePair]:
        """Accepted vs rejected edits of the same (source, instruction), hardest first."""
        verdicts = {
            name: self.rows(name)
            for name, enabled in self.filters()
            if enabled and self.store.tables.exists(name)
        }
        return preference_pairs(
            mined, self.rows("candidates"), verdicts, self.cfg.export_preference_pairs
        )

    def by_origin(self, origin: str) -> list[TripletRow]:
        """The triplets of one origin (mined, inverted, composed)."""
        return [t for t in self.triplets() if t.origin == origin]

    def samples(
        self, per_origin: int, origins: tuple[str, ...] = ("mined", "inverted", "composed")
    ) -> list[TripletRow]:
        """The first ``per_origin`` triplets of each origin, for sample grids."""
        return [t for origin in origins for t in self.by_origin(origin)[:per_origin]]

    def export(self, name: str | None = None) -> StageResult:
        """Stage 11: write ``dataset/`` (parquet shards with images + card)."""
        with self.runner.writing("export"):
            return self._export(name)

    def _export(self, name: str | None) -> StageResult:
        """The body of ``export``, under the writer lock."""
        from nhr.summary import funnel, with_changes

        t0 = time.perf_counter()
        rows = self.triplets()
        chains = self.bootstrap.chains(rows)
        prefs = self.preference_pairs([t for t in rows if t.origin == "mined"])
        body = card_body(
            name or self.store.root.name, rows, with_changes(funnel(self)), len(chains), len(prefs)
        )
        shards = export_dataset(
            rows,
            self.store.blobs,
            self.store.root / "dataset",
            body,
            self.cfg.export_shard_rows,
            chains,
            prefs,
            self.cfg.export_webdataset_shard_rows if self.cfg.export_webdataset else 0,
            self.cfg.export_license,
            provenance(rows, name or self.store.root.name),
        )
        stats = {
            "stage": "export",
            "rows_in": len(rows),
            "rows_out": len(rows),
            "shards": [str(p.relative_to(self.store.root)) for p in shards],
            "drops_by_reason": {},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.store.write_stats("export", stats)
        return StageResult("export", rows, stats)

    # ---- photos as sources (SOURCES photos) -----------------------------------------
    def photo_collection(self) -> Any:
        """The configured photo collection (PHOTOS), opened for reading by index."""
        from nhr.photo_collections import open_collection

        return open_collection(self.cfg.photos, self.cfg.photos_column, self.cfg.photos_split)

    def render_synthetic_photos(self) -> Path | None:
        """With PHOTOS_SYNTHETIC > 0, render that many synthetic-world pictures as PNG
        files into PHOTOS (a stand-in photo collection whose pixels this run's synthetic
        world knows); None otherwise."""
        if not self.cfg.photos_synthetic:
            return None
        from nhr.backends.registry import synthetic_world
        from nhr.backends.synthetic.photo_folder import write_photo_folder

        world = synthetic_world(self.backends.ctx)
        c = self.cfg
        return write_photo_folder(
            world, Path(c.photos), c.photos_synthetic, c.seed, (c.long_side_min, c.long_side_max)
        )

    def photos(self) -> StageResult:
        """Read, check and caption the photos (table ``photos``); refusals are counted
        by reason in its stats."""
        from nhr.images import ImageLimits
        from nhr.stages.photos import PhotoStage, plan_photo_jobs

        self.render_synthetic_photos()
        collection = self.photo_collection()
        stage = PhotoStage(
            collection,
            self.backends.captioner,
            self.store.blobs,
            ImageLimits.from_config(self.cfg),
            self.cfg.long_side_max,
        )
        jobs = plan_photo_jobs(collection, self.cfg.photos_max, self.cfg.seed)
        return self.runner.run(stage, jobs, extra_stats={"collection_size": len(collection)})

    def photo_prompts(self) -> StageResult:
        """The photos, then K_INSTRUCTIONS instructions per caption (table ``prompts``)."""
        from nhr.stages.photos import CaptionInstructionStage

        self.photos()
        captioned = [p for p in self.rows("photos") if p.passed]
        stage = CaptionInstructionStage(
            self.backends.caption_writer, self.cfg.k_instructions, self.cfg.seed
        )
        result = self.runner.run(stage, captioned)
        empty = sum(not r.instructions for r in self.rows("prompts"))
        if empty:
            result.stats["drops_by_reason"] = {"no_instructions": empty}
            self.store.write_stats("prompts", result.stats)
        return result

    def photo_sources(self) -> StageResult:
        """One source per captioned photo with instructions (table ``sources``)."""
        from nhr.stages.photos import PhotoSourceStage

        photos = {p.photo_id: p for p in self.rows("photos") if p.passed}
        prompts = [p for p in self.rows("prompts") if p.instructions]
        stage = PhotoSourceStage(photos, self.cfg.photos)
        return self.runner.run(stage, prompts)
