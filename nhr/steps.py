"""The step table: every step of a run, in order, with the facts others read from it.

A step is one ``Pipeline`` method (``name``, a method path). It writes one table
(``table``: also the name of its stats file and of its stage) of ``record`` rows. It
reads the config ``blocks`` and calls the backend ``roles`` listed (what its settings
hash covers; ``None``: a whole-table step, whose settings are its input fingerprint). A
verdict step judges the rows of its ``subject`` table. ``notebook`` is the notebook
that makes the table (named when a later step finds it missing). A candidate
``filter`` runs in the mining chain after the editor, when ``enabled_by`` (a
``block.field`` flag; empty: always) is on. ``adaptive_reads``: tables whose blocks
the step reads too under SEARCH adaptive (the search consults their verdicts).

Adding a step is one row here, its stage class in ``nhr/stages/`` and its method in
``nhr/pipeline.py``; ``CHAIN``, the filters, ``nhr.tables``' maps and the config's
per-stage blocks are read from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nhr.records import (
    CandidateRow,
    DraftRow,
    PhotoRow,
    PromptRow,
    Record,
    SourceRow,
    TripletRow,
    Verdict,
)


@dataclass(frozen=True)
class Step:
    """One step of a run (see the module docstring)."""

    name: str
    table: str
    record: type[Record] | None
    blocks: tuple[str, ...] | None
    roles: tuple[str, ...] = ()
    notebook: str = ""
    subject: str | None = None
    filter: bool = False
    enabled_by: str = ""
    adaptive_reads: tuple[str, ...] = ()
    in_chain: bool = True

    def enabled(self, cfg: Any) -> bool:
        """Whether the config runs this step (``enabled_by`` on, or none named)."""
        if not self.enabled_by:
            return True
        block, field = self.enabled_by.split(".")
        return bool(getattr(getattr(cfg, block), field))


_FILTERS = ("prefilter", "lowlevel", "validator")

STEPS: tuple[Step, ...] = (
    Step(
        "photos",
        "photos",
        PhotoRow,
        ("sources", "images", "captions"),
        ("captioner",),
        "01_photos",
        in_chain=False,
    ),
    Step(
        "prompts",
        "prompts",
        PromptRow,
        ("prompts", "prompt_writer", "captions"),
        ("prompter", "caption_writer"),
        "01_prompts",
    ),
    Step("sources", "sources", SourceRow, ("sources", "images"), ("t2i",), "02_sources"),
    Step("gate", "plausibility", Verdict, ("gate",), ("gate_judge",), "02_sources", "sources"),
    Step(
        "edits",
        "candidates",
        CandidateRow,
        ("edits", "search"),
        ("editor",),
        "03_edits",
        adaptive_reads=_FILTERS,
    ),
    Step(
        "prefilter",
        "prefilter",
        Verdict,
        ("filters",),
        ("prefilter_judge",),
        "03_edits",
        "candidates",
        filter=True,
        enabled_by="filters.prefilter",
    ),
    Step(
        "lowlevel",
        "lowlevel",
        Verdict,
        ("filters",),
        (),
        "03_edits",
        "candidates",
        filter=True,
        enabled_by="filters.lowlevel",
    ),
    Step(
        "validate",
        "validator",
        Verdict,
        ("validation",),
        ("validator",),
        "03_edits",
        "candidates",
        filter=True,
    ),
    Step("select", "mined", TripletRow, None, (), "05_validate"),
    Step(
        "bootstrap.invert",
        "inversion",
        DraftRow,
        ("bootstrap",),
        ("inverter",),
        "06_bootstrap",
        enabled_by="bootstrap.inversion",
    ),
    Step(
        "bootstrap.backward",
        "backward",
        Verdict,
        ("validation", "bootstrap"),
        ("validator",),
        "06_bootstrap",
        "inversion",
    ),
    Step(
        "bootstrap.compose",
        "composition",
        DraftRow,
        ("bootstrap",),
        ("inverter",),
        "06_bootstrap",
    ),
    Step(
        "bootstrap.validate_composed",
        "composed_validator",
        Verdict,
        ("validation", "bootstrap"),
        ("validator",),
        "06_bootstrap",
        "composition",
    ),
    Step("bootstrap.assemble", "triplets", TripletRow, None, (), "06_bootstrap"),
    Step("export", "export", None, ("export",), (), "07_export"),
    Step("train", "train", None, ("train",), (), "13_finetune", in_chain=False),
    Step(
        "evaluate",
        "eval_scores",
        None,
        ("validation", "evaluation", "images"),
        ("validator",),
        "08_evaluate_datasets",
        in_chain=False,
    ),
)

BY_TABLE: dict[str, Step] = {s.table: s for s in STEPS}
# every step of the chain in order, as Pipeline method paths
CHAIN: tuple[str, ...] = tuple(s.name for s in STEPS if s.in_chain)
# the candidate filters (verdict tables) in pipeline order
FILTERS: tuple[str, ...] = tuple(s.table for s in STEPS if s.filter)
# the record type of each table
TABLE_TYPES: dict[str, type[Record]] = {s.table: s.record for s in STEPS if s.record}
# the table whose rows each verdict table judges
SUBJECTS: dict[str, str] = {s.table: s.subject for s in STEPS if s.subject}
# each stage (by its output table): the blocks it reads and the backend roles it calls
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    s.table: (s.blocks, s.roles) for s in STEPS if s.blocks is not None
}
# what a stage also reads under SEARCH adaptive
ADAPTIVE_READS: dict[str, tuple[str, ...]] = {
    s.table: s.adaptive_reads for s in STEPS if s.adaptive_reads
}


def maker(table: str) -> str:
    """What to run to make ``table``: its notebook, or a generic hint."""
    step = BY_TABLE.get(table)
    if step is None or not step.notebook:
        return "run the stage that writes it first"
    return f"run notebooks/{step.notebook} first (step {step.name})"


__all__ = [
    "ADAPTIVE_READS",
    "BY_TABLE",
    "CHAIN",
    "FILTERS",
    "STAGES",
    "STEPS",
    "SUBJECTS",
    "TABLE_TYPES",
    "Step",
    "maker",
]
