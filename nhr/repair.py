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
from nhr.store import RunStore, load_image

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
    midway leaves at most an orphan; the next run redoes every row the shard held."""
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
            shard = store.tables.shard_path(table, entry)
            blobs = pq.read_table(shard, columns=[column]).column(column).to_pylist()
            for rel in blobs:
                if rel not in health:
                    try:
                        load_image(store.root / rel)
                        health[rel] = True
                    except ImageError:
                        health[rel] = False
            if not all(health[rel] for rel in blobs):
                to_remove.append((table, entry, shard))
    report.checked = len(health)
    report.damaged = sorted(rel for rel, ok in health.items() if not ok)
    report.shards_removed = [str(shard.relative_to(store.root)) for _, _, shard in to_remove]
    if not dry_run:
        for rel in report.damaged:
            (store.root / rel).unlink(missing_ok=True)
        for table, entry, _ in to_remove:
            store.tables.drop(table, entry)
    return report
