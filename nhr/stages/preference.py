"""Preference pairs: each mined triplet's accepted edit beside a rejected edit of the same
(source, instruction), for preference and reward-model training.

Users of peer pipelines ask for the rejected candidates and their scores; the run keeps
every verdict, so for each (source, instruction) with an accepted edit we pair it with up
to ``per_group`` rejected candidates, hardest first: those the hard validator scored
highest, then those a filter dropped before it. Passing candidates that merely lost the
argmax are good edits, not negatives, and are never used.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.tables import RunTables, flat, group_starts, positions, required_positions, take

PREFERENCE_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("triplet_id", pa.string()),
        ("rejected_candidate_id", pa.string()),
        ("source_image", pa.string()),
        ("instruction", pa.string()),
        ("chosen_image", pa.string()),
        ("rejected_image", pa.string()),
        ("chosen_adherence", pa.float64()),
        ("chosen_aesthetic", pa.float64()),
        ("rejected_stage", pa.string()),
        ("rejected_reason", pa.string()),
        ("rejected_adherence", pa.float64()),
        ("rejected_aesthetic", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)


# mined triplets paired at once by ``iter_preference_pairs``: what it holds is the
# candidates and verdicts of their sources (about 5 candidates and 12 verdicts a
# triplet on the null world), never the whole run's; each slice scans those tables once
SLICE_ROWS = 32_768
MINED_COLUMNS = (
    "triplet_id",
    "candidate_id",
    "source_id",
    "source_image",
    "edited_image",
    "instruction",
    "adherence",
    "aesthetic",
    "width",
    "height",
)
CANDIDATE_COLUMNS = ("candidate_id", "source_id", "instruction_id", "image")
VERDICT_COLUMNS = ("subject_id", "passed", "reason", "adherence", "aesthetic")


def mined_slices(tables: RunTables, rows: int = SLICE_ROWS) -> Iterator[pa.Table]:
    """The mined triplets of the run's export (``origin`` mined), in table order, as
    tables of ``rows`` rows (the last one shorter), read a batch at a time."""
    held: list[pa.Table] = []
    n = 0
    columns = [*MINED_COLUMNS, "origin"]
    for t in tables.stream(tables.triplets_name(), columns):
        t = t.filter(pc.equal(t.column("origin"), "mined")).select(list(MINED_COLUMNS))
        held.append(t)
        n += t.num_rows
        while n >= rows:
            whole = pa.concat_tables(held)
            yield whole.slice(0, rows)
            held, n = [whole.slice(rows)], whole.num_rows - rows
    if n:
        yield pa.concat_tables(held)


def iter_preference_pairs(
    tables: RunTables, per_group: int = 1, slice_rows: int = SLICE_ROWS
) -> Iterator[pa.Table]:
    """``preference_pairs`` of a run's mined triplets, the same rows in the same order,
    computed and given ``slice_rows`` mined triplets at a time: each slice reads only
    the candidates of its sources and their verdicts (a group's candidates share its
    source), so memory follows the slice, not the run."""
    names = [n for n in tables.enabled if tables.exists(n)]
    if per_group <= 0 or not names:
        return
    for mined in mined_slices(tables, slice_rows):
        sources = pc.unique(flat(mined.column("source_id")))
        cands = tables.read_where("candidates", "source_id", sources, CANDIDATE_COLUMNS)
        ids = cands.column("candidate_id")
        verdicts = {n: tables.read_where(n, "subject_id", ids, VERDICT_COLUMNS) for n in names}
        yield preference_pairs(mined, cands, verdicts, per_group)


def run_preference_pairs(
    tables: RunTables, per_group: int = 1, slice_rows: int = SLICE_ROWS
) -> pa.Table:
    """``iter_preference_pairs`` as one table."""
    parts = list(iter_preference_pairs(tables, per_group, slice_rows))
    return pa.concat_tables([PREFERENCE_SCHEMA.empty_table(), *parts])


def first_failures(verdicts: dict[str, pa.Table]) -> pa.Table:
    """Per failed subject, the first stage (in the order of ``verdicts``) that failed it:
    ``subject_id``, ``rank`` (that stage's position), ``stage``, ``reason``, scores."""
    parts = []
    for rank, (stage, table) in enumerate(verdicts.items()):
        failed = table.filter(pc.invert(pc.fill_null(table.column("passed"), False)))
        parts.append(
            pa.table(
                {
                    "subject_id": flat(failed.column("subject_id")),
                    "rank": pa.array(np.full(failed.num_rows, rank), pa.int64()),
                    "stage": pa.repeat(pa.scalar(stage), failed.num_rows),
                    "reason": flat(failed.column("reason")),
                    "adherence": flat(failed.column("adherence")).cast(pa.float64()),
                    "aesthetic": flat(failed.column("aesthetic")).cast(pa.float64()),
                }
            )
        )
    if not parts:
        return pa.table({"subject_id": pa.array([], pa.string()), "rank": pa.array([], pa.int64())})
    every = pa.concat_tables(parts)
    # the first failure of a subject: stable order is by rank already
    first = positions(every.column("subject_id"), every.column("subject_id"))
    return every.filter(pa.array(first == np.arange(every.num_rows)))


def preference_pairs(
    mined: pa.Table,
    candidates: pa.Table,
    verdicts: dict[str, pa.Table],
    per_group: int = 1,
) -> pa.Table:
    """Pairs for every mined triplet (a ``PREFERENCE_SCHEMA`` table, in the order of
    ``mined``, each triplet's negatives hardest first); ``verdicts`` maps a stage name
    (``prefilter``, ``lowlevel``, ``validator``, in pipeline order) to its verdicts."""
    if per_group <= 0 or not verdicts or not mined.num_rows:
        return PREFERENCE_SCHEMA.empty_table()
    failed = first_failures(verdicts)
    cpos = positions(failed.column("subject_id"), candidates.column("candidate_id"))
    failed = failed.filter(pa.array(cpos >= 0))
    cand = take(candidates, cpos[cpos >= 0])
    adh = pc.fill_null(failed.column("adherence"), 0.0).to_numpy(zero_copy_only=False)
    aes = pc.fill_null(failed.column("aesthetic"), 0.0).to_numpy(zero_copy_only=False)
    hard = np.nan_to_num(adh, nan=0.0) * np.nan_to_num(aes, nan=0.0) + 0.0
    negatives = pa.table(
        {
            "source_id": cand.column("source_id"),
            "instruction_id": cand.column("instruction_id"),
            "rank": failed.column("rank"),
            "hard": hard,
            "candidate_id": cand.column("candidate_id"),
            "image": cand.column("image"),
            "stage": failed.column("stage"),
            "reason": failed.column("reason"),
            "adherence": failed.column("adherence"),
            "aesthetic": failed.column("aesthetic"),
        }
    ).sort_by(
        [
            ("source_id", "ascending"),
            ("instruction_id", "ascending"),
            ("rank", "descending"),
            ("hard", "descending"),
            ("candidate_id", "ascending"),
        ]
    )
    starts = group_starts(negatives, ["source_id", "instruction_id"])
    sizes = np.diff(np.append(starts, negatives.num_rows))
    place = np.arange(negatives.num_rows) - np.repeat(starts, sizes)
    negatives = negatives.filter(pa.array(place < per_group))
    chosen = take(
        candidates,
        required_positions(
            mined.column("candidate_id"), candidates.column("candidate_id"), "mined candidate"
        ),
    )
    left = pa.table(
        {
            "source_id": chosen.column("source_id"),
            "instruction_id": chosen.column("instruction_id"),
            "order": np.arange(mined.num_rows),
        }
    )
    right = negatives.append_column("place", pa.array(np.arange(negatives.num_rows)))
    joined = left.join(right, ["source_id", "instruction_id"], join_type="inner").sort_by(
        [("order", "ascending"), ("place", "ascending")]
    )
    t = take(mined, joined.column("order").to_numpy())
    keep = pc.not_equal(
        joined.column("image"), take(chosen, joined.column("order").to_numpy()).column("image")
    )
    t, joined = t.filter(keep), joined.filter(keep)
    pair_id = pc.binary_join_element_wise(
        "pref-", t.column("triplet_id"), "-", joined.column("candidate_id"), ""
    )
    return pa.Table.from_arrays(
        [
            flat(col).cast(field.type)
            for col, field in zip(
                [
                    pair_id,
                    t.column("triplet_id"),
                    joined.column("candidate_id"),
                    t.column("source_image"),
                    t.column("instruction"),
                    t.column("edited_image"),
                    joined.column("image"),
                    t.column("adherence"),
                    t.column("aesthetic"),
                    joined.column("stage"),
                    joined.column("reason"),
                    joined.column("adherence"),
                    joined.column("aesthetic"),
                    t.column("width"),
                    t.column("height"),
                ],
                PREFERENCE_SCHEMA,
                strict=True,
            )
        ],
        schema=PREFERENCE_SCHEMA,
    )
