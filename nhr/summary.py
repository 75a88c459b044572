"""The run summary: the funnel (the paper's Table 2, ours beside it), stage stats, and,
where the world knows the truth, how the hard validator did against it."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from nhr.store import atomic_write_json

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline

# Table 2 of the paper (v2): rows after each stage, on 63,292 prompts.
PAPER_FUNNEL: list[dict[str, Any]] = [
    {"stage": "T2I images", "rows": 1_171_773},
    {"stage": "after plausibility gate", "rows": 515_584},
    {"stage": "edits generated", "rows": 3_072_385},
    {"stage": "after soft pre-filter", "rows": 1_321_126},
    {"stage": "after low-level check", "rows": 1_281_492},
    {"stage": "after hard validator", "rows": 471_523},
    {"stage": "after argmax selection", "rows": 325_287},
]


def _count(pipe: Pipeline, table: str, passed: bool = False) -> int | None:
    """Rows of a table (or its passed verdicts); None when the table was never written."""
    if not pipe.store.tables.exists(table):
        return None
    rows = pipe.rows(table)
    return sum(r.passed for r in rows) if passed else len(rows)


def funnel(pipe: Pipeline) -> list[dict[str, Any]]:
    """Rows after each stage, in pipeline order; a disabled filter repeats the row above."""
    steps = [
        ("prompts", "prompts", False),
        ("T2I images", "sources", False),
        ("after plausibility gate", "plausibility", True),
        ("edits generated", "candidates", False),
        ("after soft pre-filter", "prefilter", True),
        ("after low-level check", "lowlevel", True),
        ("after hard validator", "validator", True),
        ("after argmax selection", "mined", False),
    ]
    out: list[dict[str, Any]] = []
    enabled = {"prefilter": pipe.cfg.prefilter, "lowlevel": pipe.cfg.lowlevel}
    for stage, table, passed in steps:
        if not enabled.get(table, True):
            out.append({"stage": stage, "rows": out[-1]["rows"], "skipped": True})
            continue
        rows = _count(pipe, table, passed)
        if rows is None:
            break
        out.append({"stage": stage, "rows": rows})
    return out


def _with_changes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the change from the previous step where the paper reports one (filters)."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if i and row["stage"].startswith("after") and rows[i - 1]["rows"]:
            row["change"] = round(row["rows"] / rows[i - 1]["rows"] - 1, 4)
        out.append(row)
    return out


def build_summary(pipe: Pipeline, with_truth: bool = True) -> dict[str, Any]:
    """Everything a reader of the run wants in one JSON object."""
    from nhr.evaluate.truth import judge_vs_truth

    f = funnel(pipe)
    stats = pipe.store.all_stats()
    exported = stats.get("export", {}).get("rows_out")
    summary: dict[str, Any] = {
        "run": pipe.store.root.name,
        "funnel": _with_changes(f),
        "paper_funnel": _with_changes(PAPER_FUNNEL),
        "triplets": exported if exported is not None else f[-1]["rows"] if f else 0,
        "stages": {
            name: {
                k: s.get(k)
                for k in ("rows_in", "rows_out", "drops_by_reason", "seconds", "not_scheduled")
                if k in s
            }
            for name, s in stats.items()
        },
        "seconds_total": round(sum(float(s.get("seconds", 0)) for s in stats.values()), 3),
        "config": pipe.cfg.to_params(),
    }
    rows = {r["stage"]: r["rows"] for r in f}
    if rows.get("edits generated") and "after hard validator" in rows:
        summary["hard_validator_pass_rate"] = round(
            rows["after hard validator"] / rows["edits generated"], 4
        )
    if rows.get("after argmax selection"):
        summary["generations_per_triplet"] = round(
            rows["edits generated"] / rows["after argmax selection"], 2
        )
    if pipe.store.tables.exists("mined"):
        summary["edit_types"] = dict(Counter(t.edit_type for t in pipe.triplets()))
    if with_truth and pipe.backends.truth is not None and pipe.store.tables.exists("validator"):
        summary["judge_vs_truth"] = judge_vs_truth(pipe)
    return summary


def write_summary(pipe: Pipeline, with_truth: bool = True) -> dict[str, Any]:
    """Build the summary and write ``summary.json`` atomically."""
    summary = build_summary(pipe, with_truth)
    atomic_write_json(pipe.store.root / "summary.json", summary)
    return summary


def read_summary(run_dir: Any) -> dict[str, Any]:
    """Read a run's ``summary.json``."""
    from pathlib import Path

    return json.loads((Path(run_dir) / "summary.json").read_text())
