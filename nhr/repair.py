"""Checks a run folder's images and repairs damage so a rerun regenerates exactly it.

Images are content-addressed blobs written by two stages: ``sources`` (column ``image``)
and ``candidates`` (column ``image``). A damaged or missing blob is deleted together with
the shards that produced it; every backend is deterministic in its seeds, so the next
``nhr run`` with the same config writes the same pixels under the same name, and the
verdicts downstream (keyed by ids, not by file) stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from nhr.errors import ImageError
from nhr.store import RunStore

# (table, column) pairs whose blobs a stage produced
PRODUCERS = (("sources", "image"), ("candidates", "image"))


@dataclass
class RepairReport:
    """What a check found and (unless a dry run) removed."""

    checked: int = 0
    damaged: list[str] = field(default_factory=list)
    shards_removed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A short human-readable account."""
        out = [f"checked {self.checked} images, {len(self.damaged)} damaged"]
        out += [f"  damaged: {rel}" for rel in self.damaged]
        out += [f"  removed shard: {rel}" for rel in self.shards_removed]
        return out


def repair(run_dir: Path | str, dry_run: bool = False) -> RepairReport:
    """Find damaged blobs of produced images; delete them and every shard that produced
    one (a blob can be produced more than once: an edit that changed nothing is its
    source's image). A shard is uncommitted first (its ledger entry deleted), so a crash
    midway leaves at most an orphan; the next run redoes every row the shard held. The
    run folder may be a path or an object-store URL."""
    store = RunStore(run_dir)
    report = RepairReport()
    health: dict[str, bool] = {}
    to_remove = []
    for table, column in PRODUCERS:
        if not store.tables.exists(table):
            continue
        for entry in store.tables.entries(table):
            if not entry.rows:
                continue
            path, fs = store.files.arrow(store.tables.shard_rel(table, entry))
            blobs = pq.read_table(path, columns=[column], filesystem=fs).column(column).to_pylist()
            for rel in blobs:
                if rel not in health:
                    try:
                        store.blobs.load(rel)
                        health[rel] = True
                    except ImageError:
                        health[rel] = False
            if not all(health[rel] for rel in blobs):
                to_remove.append((table, entry, store.tables.shard_rel(table, entry)))
    report.checked = len(health)
    report.damaged = sorted(rel for rel, ok in health.items() if not ok)
    report.shards_removed = [rel for _, _, rel in to_remove]
    if not dry_run:
        for rel in report.damaged:
            store.delete(rel)
        for table, entry, _ in to_remove:
            store.tables.drop(table, entry)
    return report
