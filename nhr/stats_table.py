"""A short table of stage stats for notebooks: one row per stage.

A stage's stats (``stats/<stage>.json``, ``result.stats``) hold everything the run
recorded: settings, engine, shards, usage. A notebook cell wants the few numbers a
person reads: rows in and out, drops by reason, seconds and API cost. ``stats_table``
shows those; the full dict stays a call away (``result.stats``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("rows_in", "rows_out", "dropped", "drops_by_reason", "seconds", "cost_usd")


def _stats_of(result: Any) -> dict[str, Any]:
    """The stats dict of a stage result (anything with ``.stats``) or of a stats dict."""
    stats = result if isinstance(result, dict) else getattr(result, "stats", None)
    if not isinstance(stats, dict):
        raise TypeError(f"expected a stage result or its stats dict, got {type(result).__name__}")
    return stats


def stats_row(stats: dict[str, Any]) -> dict[str, Any]:
    """The short row of one stage's stats (see ``COLUMNS``)."""
    drops = {str(k): int(v) for k, v in (stats.get("drops_by_reason") or {}).items()}
    ordered = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))
    usage = stats.get("usage") or {}
    return {
        "rows_in": stats.get("rows_in"),
        "rows_out": stats.get("rows_out"),
        "dropped": sum(drops.values()),
        "drops_by_reason": ", ".join(f"{k} {v:,}" for k, v in ordered),
        "seconds": round(float(stats.get("seconds") or 0.0), 2),
        "cost_usd": round(float(usage.get("cost_usd", 0.0)), 4),
    }


def stats_table(*results: Any) -> pd.DataFrame:
    """One row per stage result (or stats dict) given, indexed by stage; None entries
    (a disabled stage) are left out."""
    import pandas as pd

    rows, names = [], []
    for result in results:
        if result is None:
            continue
        stats = _stats_of(result)
        names.append(str(stats.get("stage") or getattr(result, "table", "")))
        rows.append(stats_row(stats))
    return pd.DataFrame(rows, index=pd.Index(names, name="stage"), columns=list(COLUMNS))
