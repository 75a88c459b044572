"""The run summary: the funnel (the paper's Table 2, ours beside it), stage stats, and,
where the world knows the truth, how the hard validator did against it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.compute as pc

from nhr.evaluate.truth import audit, judge_vs_truth
from nhr.judge_breaker import judge_error_shares
from nhr.tables import RunTables

# Table 2 of the paper (v2): rows after each stage, on 63,292 prompts, in its order.
PAPER_FUNNEL: list[dict[str, Any]] = [
    {"stage": "T2I images", "rows": 1_171_773},
    {"stage": "after plausibility gate", "rows": 515_584},
    {"stage": "edits generated", "rows": 3_072_385},
    {"stage": "after soft pre-filter", "rows": 1_321_126},
    {"stage": "after low-level check", "rows": 1_281_492},
    {"stage": "after hard validator", "rows": 471_523},
    {"stage": "after argmax selection", "rows": 325_287},
    {"stage": "after inversion", "rows": 633_904},
    {"stage": "after composition", "rows": 828_212},
    {"stage": "after backward consistency", "rows": 720_088},
]
# the change each step made in the paper, shown beside ours (its composition ran before
# backward consistency; ours composes only backward-consistent edits)
PAPER_CHANGES: dict[str, float] = {
    "after plausibility gate": -0.56,
    "after soft pre-filter": -0.57,
    "after low-level check": -0.03,
    "after hard validator": -0.632,
    "after argmax selection": -0.31,
    "after inversion": 0.949,
    "after backward consistency": -0.131,
    "after composition": 0.307,
}


def _count(tables: RunTables, table: str, passed: bool = False) -> int | None:
    """Rows of a table (or its passed verdicts, from the bool column alone); None when the
    table was never written."""
    if not tables.exists(table):
        return None
    return tables.count_passed(table) if passed else tables.count(table)


def _bootstrap_steps(tables: RunTables, cfg: Any, mined: int) -> list[tuple[str, int, bool]]:
    """(stage, rows, skipped) of the bootstrapping steps, once ``assemble`` has run."""
    stats = tables.stats("triplets")
    if stats is None:
        return []
    before = stats["by_origin_before_dedup"]
    written = 0
    if cfg.bootstrap.inversion and tables.exists("inversion"):
        reasons = tables.read("inversion", ["skip_reason"]).column("skip_reason")
        written = int(pc.sum(pc.fill_null(pc.equal(pc.utf8_length(reasons), 0), True)).as_py() or 0)
    consistent = before["mined"] + before["inverted"]
    composed = consistent + before["composed"]
    return [
        ("after inversion", mined + written, not cfg.bootstrap.inversion),
        ("after backward consistency", consistent, not cfg.bootstrap.inversion),
        (
            "after composition",
            composed,
            not (cfg.bootstrap.inversion and cfg.bootstrap.composition),
        ),
        ("after dedup", stats["rows_out"], not cfg.bootstrap.dedup),
    ]


def funnel(tables: RunTables, cfg: Any) -> list[dict[str, Any]]:
    """Rows after each stage, in pipeline order; a disabled step repeats the row above.
    Counts come from shard footers and bool columns: no table is read whole."""
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
    for stage, table, passed in steps:
        if table in ("prefilter", "lowlevel") and table not in tables.enabled:
            out.append({"stage": stage, "rows": out[-1]["rows"], "skipped": True})
            continue
        rows = _count(tables, table, passed)
        if rows is None:
            return out
        out.append({"stage": stage, "rows": rows})
    for stage, rows, skipped in _bootstrap_steps(tables, cfg, out[-1]["rows"]):
        out.append({"stage": stage, "rows": rows, **({"skipped": True} if skipped else {})})
    return out


def with_changes(rows: list[dict[str, Any]], paper: bool = True) -> list[dict[str, Any]]:
    """Add each step's change from the previous row, and the paper's beside it."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if i and row["stage"].startswith("after") and rows[i - 1]["rows"]:
            row["change"] = round(row["rows"] / rows[i - 1]["rows"] - 1, 4)
            if paper and row["stage"] in PAPER_CHANGES:
                row["paper_change"] = PAPER_CHANGES[row["stage"]]
        out.append(row)
    return out


def build_summary(
    tables: RunTables, cfg: Any, truth: Any | None = None, with_truth: bool = True
) -> dict[str, Any]:
    """Everything a reader of the run wants in one JSON object; ``truth`` is the
    synthetic world's truth (None elsewhere), read only for the judge-vs-truth figures."""
    f = funnel(tables, cfg)
    stats = tables.store.all_stats()
    exported = stats.get("export", {}).get("rows_out")
    summary: dict[str, Any] = {
        "run": tables.store.name,
        "funnel": with_changes(f),
        "paper_funnel": with_changes(PAPER_FUNNEL, paper=False),
        "triplets": exported if exported is not None else f[-1]["rows"] if f else 0,
        "stages": {
            name: {
                k: s.get(k)
                for k in (
                    "rows_in",
                    "rows_out",
                    "drops_by_reason",
                    "errors_by_kind",
                    "seconds",
                    "not_scheduled",
                    "usage",
                )
                if s.get(k) not in (None, {})
            }
            for name, s in stats.items()
        },
        "seconds_total": round(sum(float(s.get("seconds", 0)) for s in stats.values()), 3),
        "config": cfg.to_params(),
    }
    for name, s in stats.items():  # which engine ran each stage (its stats tell how)
        engine = (s.get("engine") or {}).get("name")
        if engine:
            summary["stages"][name]["engine"] = engine
    rows = {r["stage"]: r["rows"] for r in f}
    if rows.get("edits generated") and "after hard validator" in rows:
        summary["hard_validator_pass_rate"] = round(
            rows["after hard validator"] / rows["edits generated"], 4
        )
    if rows.get("after argmax selection"):
        summary["generations_per_triplet"] = round(
            rows["edits generated"] / rows["after argmax selection"], 2
        )
    summary["judge_errors"] = judge_error_shares(tables)
    summary["cost"] = cost(stats, summary["triplets"])
    summary["cost_per_triplet"] = cost_per_triplet(tables, stats)
    diagnostic = (stats.get("mining") or {}).get("diagnostic")
    if diagnostic:  # how passes cluster by (source, instruction): what a search can save
        summary["search_diagnostic"] = diagnostic
    if tables.exists("mined"):
        triplets = tables.triplets(["edit_type", "origin"])
        summary["edit_types"] = _counts(triplets.column("edit_type"))
        summary["origins"] = _counts(triplets.column("origin"))
        summary["multiplier"] = multiplier(triplets.num_rows, tables.count("mined"))
    if with_truth and truth is not None and tables.exists("validator"):
        memo: dict[tuple[str, str, str], Any] = {}
        summary["judge_vs_truth"] = judge_vs_truth(tables, truth, memo)
        summary["audit"] = audit(tables, truth, memo)
    return summary


def _counts(values: Any) -> dict[str, int]:
    """Count of each value, in order of first appearance."""
    return {item["values"]: item["counts"] for item in pc.value_counts(values).to_pylist()}


def multiplier(exported: int, mined: int) -> float | None:
    """Exported triplets per mined forward triplet (the paper: 2.2× v1, 2.6× v2)."""
    return round(exported / mined, 4) if mined else None


def cost(stats: dict[str, dict[str, Any]], triplets: int) -> dict[str, Any]:
    """Remote-model usage and cost per stage and per exported triplet, and device seconds
    of local models, from the ``usage`` the runner recorded in each stage's stats."""
    per_stage = {
        name: round(float(s["usage"].get("cost_usd", 0.0)), 6)
        for name, s in stats.items()
        if s.get("usage")
    }
    totals: Counter[str] = Counter()
    for s in stats.values():
        usage = s.get("usage") or {}
        local = "device_seconds" in usage  # a local model's calls are no API calls
        for key, value in usage.items():
            totals[f"device_{key}" if local and key == "calls" else key] += float(value)
    usd = round(totals.get("cost_usd", 0.0), 6)
    return {
        "usd": usd,
        "usd_per_triplet": round(usd / triplets, 8) if triplets else None,
        "per_stage_usd": per_stage,
        "calls": int(totals.get("calls", 0)),
        "tokens_in": int(totals.get("tokens_in", 0)),
        "tokens_out": int(totals.get("tokens_out", 0)),
        "device_seconds": round(totals.get("device_seconds", 0.0), 3),
    }


# the judge stages (verdict tables) whose calls ``cost_per_triplet`` counts; the gate
# judges sources before any edit, so it is counted apart from the mining judges
MINING_JUDGES = ("prefilter", "validator")


def judge_calls(tables: RunTables, stats: dict[str, dict[str, Any]], table: str) -> int | None:
    """Calls a judge stage made: its remote calls (``usage["calls"]``, retries included,
    cache hits not) when its backend reports them, else one local call per verdict row;
    None when the stage never ran."""
    if table not in stats:
        return None
    usage = stats[table].get("usage") or {}
    if "calls" in usage:
        return int(usage["calls"])
    return tables.count(table)


def _per(value: float | None, n: int, digits: int = 4) -> float | None:
    """``value / n`` rounded, or None when either is missing."""
    return round(value / n, digits) if value is not None and n else None


def _device_seconds(stats: dict[str, dict[str, Any]], table: str) -> float | None:
    """Device seconds a stage's local model reported (None: it reports none, e.g. the
    synthetic world's CPU backends)."""
    usage = (stats.get(table) or {}).get("usage") or {}
    return round(float(usage["device_seconds"]), 3) if "device_seconds" in usage else None


def cost_per_triplet(tables: RunTables, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What each accepted forward triplet (a row of ``mined``) cost: generations (rows of
    ``candidates``), judge calls (pre-filter + hard validator; the gate's apart), editor and
    T2I device seconds, API dollars (every stage's ``usage["cost_usd"]``), and the editor's
    busy share of the mining wall time (from ``stats/mining.json``, None without it)."""
    mined = tables.count("mined") if tables.exists("mined") else 0
    generations = tables.count("candidates")
    calls = {name: judge_calls(tables, stats, name) for name in MINING_JUDGES}
    gate = judge_calls(tables, stats, "plausibility")
    mining_calls = sum(c for c in calls.values() if c is not None)
    editor, t2i = _device_seconds(stats, "candidates"), _device_seconds(stats, "sources")
    usd = sum(float((s.get("usage") or {}).get("cost_usd", 0.0)) for s in stats.values())
    mining = stats.get("mining") or {}
    wall, busy = mining.get("wall_seconds"), mining.get("editor_busy_seconds")
    return {
        "triplets": mined,
        "generations": generations,
        "generations_per_triplet": _per(generations, mined),
        "judge_calls": {**calls, "gate": gate},
        "judge_calls_per_triplet": _per(mining_calls, mined),
        "gate_calls_per_triplet": _per(gate, mined),
        "editor_gpu_seconds": editor,
        "editor_gpu_seconds_per_triplet": _per(editor, mined),
        "t2i_gpu_seconds": t2i,
        "t2i_gpu_seconds_per_triplet": _per(t2i, mined),
        "api_usd": round(usd, 6),
        "api_usd_per_triplet": _per(usd, mined, 8),
        "mining_wall_seconds": wall,
        "editor_busy_seconds": busy,
        "editor_busy_share": round(busy / wall, 4) if wall and busy is not None else None,
    }


def write_summary(
    tables: RunTables, cfg: Any, truth: Any | None = None, with_truth: bool = True
) -> dict[str, Any]:
    """Build the summary and write ``summary.json`` atomically."""
    summary = build_summary(tables, cfg, truth, with_truth)
    tables.store.write_json("summary.json", summary)
    return summary
