"""The mining chain as one object: each method runs a stage through the runner.

Notebooks call one method per stage and show its result; tests call the same methods
in-process. Every method reads its input from the run's tables, so stages can be run
one at a time, in separate processes, and resumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from nhr.backends.base import contract
from nhr.backends.registry import Backends, build_backends
from nhr.bootstrap import Bootstrap, iter_chains
from nhr.config import PipelineConfig
from nhr.engines import engine_from_config
from nhr.engines.base import Done, Link, outputs_forward, passed_forward
from nhr.errors import ConfigError
from nhr.judge_breaker import JudgeBreaker
from nhr.mining import STATS as MINING_STATS
from nhr.mining import MiningLoop, MiningResult, SearchRule
from nhr.records import CandidateRow, TripletRow, from_table
from nhr.resolutions import resolution_set
from nhr.runner import Extra, Runner, StageResult, TableParts
from nhr.stages.dataset_card import PROVENANCE_COLUMNS, provenance
from nhr.stages.edits import (
    JOB_SOURCE_COLUMNS,
    EditPlan,
    EditStage,
    call_batcher,
    plan_edit_jobs,
)
from nhr.stages.export import card_body, export_to_store
from nhr.stages.filters import LowLevelStage, PrefilterStage
from nhr.stages.gate import PlausibilityStage
from nhr.stages.preference import iter_preference_pairs, preference_pairs, run_preference_pairs
from nhr.stages.prompts import PromptStage, plan_prompt_jobs
from nhr.stages.sources import SourceStage
from nhr.stages.validator import SELECT_INPUTS, ValidatorStage, select_mined
from nhr.steps import BY_TABLE, CHAIN, FILTERS, SUBJECTS, TABLE_TYPES
from nhr.store import RunStore
from nhr.summary import cost_per_triplet, funnel, with_changes
from nhr.tables import RunTables

if TYPE_CHECKING:  # pandas costs a notebook half a second; only ``frame`` needs it
    import pandas as pd


class ConfiguredRunner(Runner):
    """The runner of a pipeline: gives each stage the output-changing config of the blocks
    it reads (``PipelineConfig.stage_settings``) before running it, so its settings hash
    covers every field that changes its output and no runtime field."""

    def __init__(self, cfg: PipelineConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.judges = JudgeBreaker.from_config(cfg)

    def run_chain(
        self,
        links: Sequence[Link],
        inputs: Any,
        budget_seconds: float = 0.0,
        extra_stats: Sequence[Extra] | None = None,
        observe: Callable[[Done], None] | None = None,
    ) -> list[StageResult]:
        """``Runner.run_chain`` (which ``run`` calls) after setting every link's
        ``stage.config``; the judge breaker sees every batch (``nhr.judge_breaker``)."""
        for link in links:
            link.stage.config = self.cfg.stage_settings(link.stage.name)
        watched = self.judges.watch(links, observe)
        return super().run_chain(links, inputs, budget_seconds, extra_stats, watched)


class Pipeline:
    """The chain over one run folder and one validated config."""

    def __init__(self, run_dir: Path | str, cfg: PipelineConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.store = RunStore(run_dir)
        self.runner = ConfiguredRunner(
            cfg,
            self.store,
            cfg.run.batch_size,
            cfg.run.workers,
            progress,
            shard_rows=cfg.run.shard_rows,
            flush_seconds=cfg.run.shard_flush_seconds,
            engine=engine_from_config(cfg, progress),
        )
        self._backends: Backends | None = None
        enabled = [name for name, on in self.filters() if on]
        self.tables = RunTables(self.store, enabled)
        self.bootstrap = Bootstrap(self.tables, self.runner, lambda: self.backends, cfg)

    @classmethod
    def open(cls, run_dir: Path | str, params: dict[str, Any], progress: bool = True) -> Pipeline:
        """The pipeline of a run folder, reconciling ``params`` with its saved config."""
        from nhr.config import reconcile

        return cls(run_dir, reconcile(run_dir, params), progress)

    def close(self) -> None:
        """Release what the engine holds (worker processes; a Ray session it started)."""
        self.runner.close()

    @property
    def backends(self) -> Backends:
        """The configured backends, built on first use."""
        if self._backends is None:
            self._backends = build_backends(self.cfg, self.store.root)
        return self._backends

    # ---- reading -------------------------------------------------------------------
    def table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """A table (or some of its columns) as Arrow, empty when it is not written yet."""
        return self.tables.read(table, columns)

    def rows(self, table: str, limit: int | None = None) -> list[Any]:
        """The records of a table (the first ``limit`` of them, reading no more)."""
        return self.tables.rows(table, limit)

    def frame(self, table: str) -> pd.DataFrame:
        """A table as a DataFrame, for looking at in a notebook."""
        return self.table(table).to_pandas()

    def rejected(self, table: str, n: int) -> tuple[list[Any], dict[str, Any]]:
        """Up to ``n`` subjects a verdict table failed, and every subject's (adherence,
        aesthetic, reason) — what a notebook's sample grid of rejects takes."""
        subjects = self.tables.subjects_failed(table).slice(0, n)
        v = self.tables.read(table, ["subject_id", "adherence", "aesthetic", "reason"])
        scores = {
            k: (adh, aes, reason)
            for k, adh, aes, reason in zip(
                *(v.column(c).to_pylist() for c in v.column_names), strict=True
            )
        }
        return from_table(subjects, TABLE_TYPES[SUBJECTS[table]]), scores

    def passed_ids(self, table: str) -> set[str]:
        """Ids of the subjects a verdict table passed."""
        return set(self.tables.passed_ids(table).to_pylist())

    def filters(self) -> list[tuple[str, bool]]:
        """The candidate filters (verdict tables) in pipeline order, with whether each runs."""
        return [(name, BY_TABLE[name].enabled(self.cfg)) for name in FILTERS]

    def survivors(self, after: str) -> list[CandidateRow]:
        """Candidates that survive every enabled filter up to and including ``after``."""
        return from_table(self.tables.survivors(after), CandidateRow)

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
        if self.cfg.sources.sources == "photos":
            return self.photo_prompts()
        stage = PromptStage(self.backends.prompter, self.cfg.prompts.k_instructions)
        return self.runner.run(
            stage, plan_prompt_jobs(self.cfg.prompts.n_prompts, self.cfg.run.seed)
        )

    def sources(self) -> StageResult:
        """Stage 2: N_SOURCE_SEEDS source images per prompt (with SOURCES photos: the
        photo of each captioned prompt). Generated sources stream on to the gate as
        they are made, so the judge runs while the T2I generates."""
        if self.cfg.sources.sources == "photos":
            return self.photo_sources()
        stage = SourceStage(
            self.backends.t2i,
            self.store.blobs,
            self.cfg.sources.n_source_seeds,
            (self.cfg.sources.long_side_min, self.cfg.sources.long_side_max),
            self.cfg.sources.aspect_max,
            self.cfg.sources.t2i_steps,
            self.cfg.sources.t2i_guidance,
            self.cfg.run.seed,
            resolution_set(self.cfg.sources.resolutions),
        )
        gate = self._gate_stage()
        batch = self.cfg.run.batch_size
        links = [Link(stage, batch, forward=outputs_forward), Link(gate, batch)]
        return self.runner.run_chain(links, self.table("prompts"))[0]

    def gate(self) -> StageResult:
        """Stage 3: the plausibility gate over every source (``sources`` already streams
        its sources through the gate; this judges any it has not, and writes the stats)."""
        return self.runner.run(self._gate_stage(), self.tables.stream("sources"))

    def _gate_stage(self) -> PlausibilityStage:
        return PlausibilityStage(self.backends.gate_judge, self.store.blobs)

    def edit_jobs(self) -> EditPlan:
        """The scheduler's lazy job plan over the gated sources (seeded order, capped)."""
        verdicts = self.table("plausibility", ["subject_id", "passed"])
        keep = verdicts.filter(verdicts.column("passed")).column("subject_id")
        # the gated only, and only the columns a job takes (a run of Table 2's size
        # holds half a million of them for the whole search)
        sources = self.tables.read_where("sources", "source_id", keep, list(JOB_SOURCE_COLUMNS))
        return plan_edit_jobs(
            sources,
            self.table("prompts", ["prompt_id", "instructions", "edit_types"]),
            self.cfg.edits.m_edit_seeds,
            (self.cfg.edits.edit_steps_min, self.cfg.edits.edit_steps_max),
            self.cfg.edits.edit_guidance,
            self.cfg.run.seed,
            self.cfg.edits.max_edit_jobs,
            steps_levels=self.cfg.edits.edit_steps_levels,
        )

    def mining_links(self) -> list[Link]:
        """The chain of the mining loop: the editor, then the enabled filters and the hard
        validator, each taking the survivors of the one before."""
        editor = self.backends.editor
        links = [
            Link(
                EditStage(editor, self.store.blobs),
                batch_size=contract(editor).max_batch or self.cfg.run.batch_size,
                forward=outputs_forward,
                batcher=call_batcher(editor, self.cfg.edits.edit_schedule_window),
            )
        ]
        on = [getattr(self, f"_{name}_stage")() for name, enabled in self.filters() if enabled]
        for i, stage in enumerate(on):
            last = i == len(on) - 1
            links.append(Link(stage, self.cfg.run.batch_size, None if last else passed_forward))
        return links

    def mine(self) -> MiningResult:
        """Stages 4–7 as one loop: edits of the gated sources streamed through the
        enabled filters and the hard validator, in rounds of seeds (SEARCH adaptive) or
        all M_EDIT_SEEDS at once (grid), within MAX_EDIT_JOBS and EDIT_BUDGET_SECONDS;
        records ``stats/mining.json``. The result holds every link's result."""
        plan = self.edit_jobs()
        loop = MiningLoop(
            self.runner,
            self.tables,
            plan,
            self.mining_links(),
            SearchRule.from_config(self.cfg),
            self.cfg.edits.edit_budget_seconds,
            {"grid_jobs": len(plan), "grid_size": plan.grid_size},
        )
        del plan  # the loop lets go of it when its chain ends
        return loop.run()

    def mining(self) -> dict[str, Any] | None:
        """The record of the mining loop (``stats/mining.json``), None before it ran."""
        return self.store.read_stats(MINING_STATS)

    def edits(self) -> StageResult:
        """Stage 4: the mining loop (``mine``); returns the candidates' result."""
        return self.mine().candidates

    def _prefilter_stage(self) -> PrefilterStage:
        """The soft pre-filter stage."""
        return PrefilterStage(
            self.backends.prefilter_judge, self.store.blobs, self.cfg.filters.prefilter_min_score
        )

    def _lowlevel_stage(self) -> LowLevelStage:
        """The low-level check stage."""
        return LowLevelStage(
            self.store.blobs, self.cfg.filters.diff_threshold, self.cfg.filters.min_component_share
        )

    def _validator_stage(self) -> ValidatorStage:
        """The hard validator stage."""
        return ValidatorStage(
            self.backends.validator, self.store.blobs, self.cfg.validation.threshold
        )

    def prefilter(self) -> StageResult | None:
        """Stage 5: the soft pre-filter over every candidate (None when disabled; after
        ``mine`` a resumed no-op)."""
        if not self.cfg.filters.prefilter:
            return None
        return self.runner.run(self._prefilter_stage(), self.tables.stream("candidates"))

    def lowlevel(self) -> StageResult | None:
        """Stage 6: the low-level check over the pre-filter's survivors (None when disabled)."""
        if not self.cfg.filters.lowlevel:
            return None
        return self.runner.run(self._lowlevel_stage(), self.tables.survivor_stream("prefilter"))

    def validate(self) -> StageResult:
        """Stage 7: the hard validator over the survivors of the enabled filters."""
        return self.runner.run(self._validator_stage(), self.tables.survivor_stream("lowlevel"))

    def select(self) -> StageResult:
        """Argmax selection per (source, instruction) → the ``mined`` table (a whole-table
        step, skipped when its inputs are unchanged since it last ran)."""
        return self.runner.whole_table("mined", SELECT_INPUTS, {"step": "argmax"}, self._select)

    def _select(self) -> tuple[TableParts, dict[str, Any]]:
        """The ``mined`` table, a slice at a time, and its figures."""
        parts, figures = select_mined(self.tables)
        return TableParts(parts, TripletRow.schema()), figures

    def triplets(self) -> list[TripletRow]:
        """The triplets the export writes: the bootstrapped, deduplicated ``triplets``
        table once ``bootstrap.assemble()`` has run, else the mined ones."""
        return from_table(self.tables.triplets(), TripletRow)

    def preference_pairs(self, mined: pa.Table | None = None) -> pa.Table:
        """Accepted vs rejected edits of the same (source, instruction), hardest first
        (of the exported mined triplets by default, a slice of them at a time)."""
        if mined is None:
            return run_preference_pairs(self.tables, self.cfg.export.export_preference_pairs)
        verdicts = {
            name: self.tables.read(
                name, ["subject_id", "passed", "reason", "adherence", "aesthetic"]
            )
            for name in self.tables.enabled
            if self.tables.exists(name)
        }
        return preference_pairs(
            mined,
            self.tables.read(
                "candidates", ["candidate_id", "source_id", "instruction_id", "image"]
            ),
            verdicts,
            self.cfg.export.export_preference_pairs,
        )

    def by_origin(self, origin: str) -> list[TripletRow]:
        """The triplets of one origin (mined, inverted, composed)."""
        return from_table(self.tables.by_origin(origin), TripletRow)

    def samples(
        self, per_origin: int, origins: tuple[str, ...] = ("mined", "inverted", "composed")
    ) -> list[TripletRow]:
        """The first ``per_origin`` triplets of each origin, for sample grids."""
        return [
            t
            for origin in origins
            for t in from_table(self.tables.by_origin(origin).slice(0, per_origin), TripletRow)
        ]

    def write_summary(self, with_truth: bool = True) -> dict[str, Any]:
        """Write ``summary.json`` (the funnel, stats, cost and, where the world knows it,
        the truth audit) and return it."""
        from nhr.summary import write_summary

        return write_summary(self.tables, self.cfg, self.backends.truth, with_truth)

    def export(self, name: str | None = None) -> StageResult:
        """Stage 11: write ``dataset/`` (parquet shards with images + card); a
        whole-table step, skipped when its inputs and settings are unchanged."""
        source = self.tables.triplets_name()
        name = name or self.store.name
        settings = {
            "name": name,
            "shard_rows": self.cfg.export.export_shard_rows,
            "preference_pairs": self.cfg.export.export_preference_pairs,
            "source": source,
            "test_share": self.cfg.export.export_test_share,
        }
        inputs = [source, "mined", "candidates", "sources", "prompts", "plausibility"]
        inputs += [*self.tables.enabled, "inversion"]
        return self.runner.whole_table(
            "export",
            inputs,
            settings,
            lambda: self._export(name, source),
            lambda: self.store.exists("dataset/README.md"),
        )

    def _export(self, name: str, source: str) -> tuple[None, dict[str, Any]]:
        """Stream the triplets of ``source`` into ``dataset/``; the export's figures."""
        origins: Counter[str] = Counter()
        edit_types: Counter[str] = Counter()
        for part in self.tables.stream(source, ["origin", "edit_type"]):
            origins.update(_counts(part.column("origin")))
            edit_types.update(_counts(part.column("edit_type")))
        n_triplets = sum(origins.values())
        funnel_rows = with_changes(funnel(self.tables, self.cfg))
        cost = cost_per_triplet(self.tables, self.store.all_stats())
        written: dict[str, int] = {}

        def body(rows: dict[str, int]) -> str:
            """The card's text, once the rows of every config are known."""
            written.update(rows)
            return card_body(
                name,
                dict(origins),
                dict(edit_types),
                funnel_rows,
                rows["multiturn"],
                rows["preference"],
                cost,
            )

        batch = self.cfg.export.export_shard_rows
        shards = export_to_store(
            self.store,
            "dataset",
            self.tables.iter_batches(source, TripletRow.schema().names, batch),
            body,
            batch,
            # a slice of chains, and of mined triplets' pairs, at a time, written as
            # they come
            iter_chains(self.tables, source),
            iter_preference_pairs(self.tables, self.cfg.export.export_preference_pairs),
            (
                self.tables.iter_batches(source, TripletRow.schema().names, batch)
                if self.cfg.export.export_webdataset
                else None
            ),
            self.cfg.export.export_webdataset_shard_rows,
            self.cfg.export.export_license,
            provenance(self.tables.stream(source, PROVENANCE_COLUMNS), name),
            self.cfg.export.export_test_share,
        )
        figures = {
            "rows_in": n_triplets,
            "rows_out": n_triplets,
            "shards": shards,
            "rows_by_config": {
                "default": n_triplets,
                "multiturn": written["multiturn"],
                "preference": written["preference"],
            },
            "drops_by_reason": {},
        }
        return None, figures

    # ---- photos as sources (SOURCES photos) -----------------------------------------
    def photo_collection(self) -> Any:
        """The configured photo collection (PHOTOS), opened for reading by index."""
        from nhr.photo_collections import open_collection

        if not self.cfg.sources.photos:
            raise ConfigError(
                "SOURCES is photos but PHOTOS is empty",
                "set PHOTOS to a folder, parquet, WebDataset shards or a hub id",
            )
        return open_collection(
            self.cfg.sources.photos, self.cfg.sources.photos_column, self.cfg.sources.photos_split
        )

    def render_synthetic_photos(self) -> Path | None:
        """With PHOTOS_SYNTHETIC > 0, render that many synthetic-world pictures as PNG
        files into PHOTOS (a stand-in photo collection whose pixels this run's synthetic
        world knows); None otherwise."""
        if not self.cfg.sources.photos_synthetic:
            return None
        from nhr.backends.registry import synthetic_world
        from nhr.backends.synthetic.photo_folder import write_photo_folder

        world = synthetic_world(self.backends.ctx)
        return write_photo_folder(
            world,
            Path(self.cfg.sources.photos),
            self.cfg.sources.photos_synthetic,
            self.cfg.run.seed,
            (self.cfg.sources.long_side_min, self.cfg.sources.long_side_max),
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
            self.cfg.sources.long_side_max,
        )
        jobs = plan_photo_jobs(collection, self.cfg.sources.photos_max, self.cfg.run.seed)
        return self.runner.run(stage, jobs, extra_stats={"collection_size": len(collection)})

    def photo_prompts(self) -> StageResult:
        """The photos, then K_INSTRUCTIONS instructions per caption (table ``prompts``)."""
        from nhr.stages.photos import CaptionInstructionStage

        self.photos()
        captioned = [p for p in self.rows("photos") if p.passed]
        stage = CaptionInstructionStage(
            self.backends.caption_writer, self.cfg.prompts.k_instructions, self.cfg.run.seed
        )
        return self.runner.run(stage, captioned, extra_stats=self._no_instructions)

    def _no_instructions(self) -> dict[str, Any]:
        """The prompts' drops: captions no instruction was written for."""
        empty = sum(not r.instructions for r in self.rows("prompts"))
        return {"drops_by_reason": {"no_instructions": empty}} if empty else {}

    def photo_sources(self) -> StageResult:
        """One source per captioned photo with instructions (table ``sources``)."""
        from nhr.stages.photos import PhotoSourceStage

        photos = {p.photo_id: p for p in self.rows("photos") if p.passed}
        prompts = [p for p in self.rows("prompts") if p.instructions]
        stage = PhotoSourceStage(photos, self.cfg.sources.photos)
        return self.runner.run(stage, prompts)


def _counts(values: Any) -> dict[str, int]:
    """Count of each value."""
    return {item["values"]: item["counts"] for item in pc.value_counts(values).to_pylist()}
