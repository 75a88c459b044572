"""What a run holds at once is bounded by a batch, a shard or a slice, not by the run:
the chain's rows held open between links, fingerprints, table streams, the search
diagnostic, the export's preference pairs and chains. Counts of rows held, not timings."""

import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_runner import PlusStage, Square, SquareStage

from nhr import allocators, hashing, slices
from nhr import runner as runner_mod
from nhr import tables as tables_mod
from nhr.bootstrap import Bootstrap, chains, iter_chains
from nhr.engines.base import Link, outputs_forward
from nhr.judge_breaker import judge_error_shares
from nhr.mining import committed_decisions, decided_outcomes
from nhr.records import PromptJob, Record, from_table
from nhr.runner import Runner
from nhr.search_diagnostic import diagnose, diagnose_groups
from nhr.stages import composition as composition_mod
from nhr.stages import preference as preference_mod
from nhr.stages.composition import plan_compose_jobs
from nhr.stages.validator import select_argmax
from nhr.store import RunStore
from nhr.store.shards import TableStore


class PlusAgain(PlusStage):
    name = "plus_again"


def every_tenth(inputs: list[Record], outputs: list[Square]) -> list[Square]:
    """Forward the rows whose value ends in 0 (one in five here: a filter that drops
    most, as the pre-filter does)."""
    return [o for o in outputs if o.value % 10 == 0]


def _chain_rows(tmp_path: Any, shard_rows: int, monkeypatch: Any) -> tuple[int, list[Any]]:
    """Run a three-link chain over 300 jobs; the most rows it held open at once, and the
    last link's rows."""
    held: list[int] = []
    take = runner_mod._ChainRun._take

    def counting(self: Any, done: Any) -> None:
        take(self, done)
        held.append(self.held())

    monkeypatch.setattr(runner_mod._ChainRun, "_take", counting)
    runner = Runner(RunStore(tmp_path), batch_size=5, progress=False, shard_rows=shard_rows)
    links = [
        Link(SquareStage(), 5, outputs_forward),
        Link(PlusStage(), 5, every_tenth),
        Link(PlusAgain(), 5),
    ]
    runner.run_chain(links, [PromptJob(f"p{i:03d}", i, "") for i in range(300)])
    rows = from_table(runner.store.tables.read("plus_again", Square.schema()), Square)
    return max(held), sorted((r.prompt_id, r.value) for r in rows)


def test_a_chain_holds_a_shard_of_rows_open_at_most(tmp_path, monkeypatch):
    # the last link gets 60 rows: with shards of 1,000 it commits only at the end, and
    # every row stays open upstream until then
    most_unbounded, reference = _chain_rows(tmp_path / "a", 1000, monkeypatch)
    assert most_unbounded >= 250
    # shards of 40 rows: every buffer is committed whenever 40 more rows are held open;
    # what the engine has queued (4 batches) and running (1) at each of the two links
    # after the first may come on top: rows sent there cannot be committed yet
    most, rows = _chain_rows(tmp_path / "b", 40, monkeypatch)
    assert most <= 40 + 2 * (4 + 1) * 5
    assert rows == reference and len(rows) == 60


def test_fingerprints_are_made_a_slice_at_a_time(monkeypatch):
    keys = pa.chunked_array([pa.array([f"k{i}" for i in range(10)]), pa.array(["x", "y"])])
    whole = np.fromiter(map(hash, keys.to_pylist()), np.int64).view(np.uint64)
    monkeypatch.setattr(hashing, "FINGERPRINT_ROWS", 5)
    assert (hashing.fingerprints(keys) == whole).all()
    assert len(hashing.fingerprints(pa.array([], pa.string()))) == 0


def test_streams_hold_a_batch_and_give_the_table(tiny_chain):
    tables = tiny_chain.tables
    whole = tables.read("candidates")
    parts = list(tables.stream("candidates", batch_rows=7))
    assert max(p.num_rows for p in parts) <= 7 and len(parts) > 1
    assert pa.concat_tables(parts).equals(whole)
    assert len(tables.stream("candidates")) == whole.num_rows
    survivors = tables.survivor_stream("lowlevel")
    assert pa.concat_tables(list(survivors)).equals(tables.survivors("lowlevel"))
    assert len(survivors) == tables.survivors("lowlevel").num_rows
    ids = whole.column("candidate_id").slice(3, 5)
    picked = tables.read_where("candidates", "candidate_id", ids, ["candidate_id", "seed"])
    assert picked.column("candidate_id").to_pylist() == ids.to_pylist()
    assert picked.schema.names == ["candidate_id", "seed"]
    none = tables.read_where("candidates", "candidate_id", pa.array([], pa.string()))
    assert none.num_rows == 0 and none.schema.names == whole.schema.names


def test_a_kept_set_is_hashed_once_per_stream_not_once_per_batch(tiny_chain, monkeypatch):
    # pc.is_in hashes its whole value set on every call: per batch, that made a
    # filtered read of n rows cost n × |keep| / batch
    tables = tiny_chain.tables
    built: list[int] = []

    class Counting(tables_mod.KeyIndex):
        def __init__(self, keys: Any) -> None:
            built.append(len(keys))
            super().__init__(keys)

    monkeypatch.setattr(tables_mod, "KeyIndex", Counting)
    whole = tables.read("candidates")
    keep = tables.survivor_ids("lowlevel")
    stream = tables_mod.TableStream(tables, "candidates", batch_rows=3, keep=keep)
    parts = list(stream)
    assert len(parts) > 2 and built == [len(keep)]
    assert pa.concat_tables(parts).equals(tables.survivors("lowlevel"))
    ids = whole.column("candidate_id").take(pa.array([9, 2, 5, 2]))
    picked = tables.read_where("candidates", "candidate_id", ids, ["candidate_id"])
    assert picked.column("candidate_id").to_pylist() == sorted(
        set(ids.to_pylist()), key=whole.column("candidate_id").to_pylist().index
    )
    assert built == [len(keep), 4]


def test_a_key_index_answers_as_is_in_and_index_in_do():
    rng = np.random.default_rng(0)
    universe = [f"k{i}" for i in range(400)] + ["", "é", "k1 "]
    keep = pa.chunked_array([pa.array(list(rng.choice(universe, 90))), pa.array(["", "é"])])
    probe = pa.chunked_array([pa.array(list(rng.choice(universe, 300))), pa.array(["k1 "])])
    want = pc.is_in(probe, value_set=keep.combine_chunks()).to_numpy(zero_copy_only=False)
    index = hashing.KeyIndex(keep)
    assert (index.isin(probe) == want).all() and want.sum() > 0
    assert not hashing.KeyIndex(pa.array([], pa.string())).isin(probe).any()
    # positions as pc.index_in gives them: the first place of a repeated key, -1 if absent
    at = pc.index_in(probe, value_set=keep.combine_chunks())
    assert (index.positions(probe) == pc.fill_null(at, -1).to_numpy()).all()
    assert len(set(keep.to_pylist())) < len(keep)  # the set does repeat keys


def test_a_key_set_answers_as_a_python_set_does_as_it_grows():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**64, 300_000, dtype=np.uint64)
    keys[7] = 0  # hash("") is 0: a fingerprint like any other
    ks, plain = hashing.KeySet(), set()
    for lo in range(0, 200_000, 9_000):
        batch = keys[lo : lo + 9_000].copy()
        batch[-1] = keys[lo // 2]  # one key seen before
        expected, seen = -1, set(plain)
        for i, k in enumerate(batch.tolist()):  # the first key already in, or earlier
            if k in seen:
                expected = i
                break
            seen.add(k)
        assert ks.add(batch) == expected >= 0
        plain.update(batch.tolist())
        probe = keys[max(0, lo - 5_000) : lo + 20_000]
        assert (ks.contains(probe) == np.isin(probe, list(plain))).all()
    assert len(ks) > len(plain) >= 190_000  # counted as added, as before
    assert ks._bits.size >= len(plain) // 2  # the bitmap grew with the set


def _decided_by_rows(tables: Any) -> dict[str, tuple[bool, float]]:
    """The decisions as the verdict rows give them, one row at a time: the validator's
    verdict, else the drop of the low-level check (score 0), else the pre-filter's."""
    out: dict[str, tuple[bool, float]] = {}
    for name in ("validator", "lowlevel", "prefilter"):
        for v in tables.rows(name):
            if v.subject_id in out or (name != "validator" and v.passed):
                continue
            if name == "lowlevel":
                score = 0.0
            elif v.reason == "judge_error":
                score = float("nan")
            else:
                score = min(v.adherence, v.aesthetic)
            out[v.subject_id] = (bool(v.passed and name == "validator"), score)
    return out


def test_committed_decisions_are_the_verdict_rows_held_as_fingerprints(tiny_chain):
    decided = committed_decisions(tiny_chain.tables)
    want = _decided_by_rows(tiny_chain.tables)
    ids = tiny_chain.tables.read("candidates", ["candidate_id"]).column("candidate_id")
    at = decided.positions(ids)
    got = {
        cid: (bool(decided.passed[a]), float(decided.score[a]))
        for cid, a in zip(ids.to_pylist(), at, strict=True)
        if a >= 0
    }
    assert len(got) == len(decided) == len(want) > 0
    assert got.keys() == want.keys()
    for cid, (ok, score) in want.items():
        assert got[cid][0] == ok
        assert got[cid][1] == score or (np.isnan(score) and np.isnan(got[cid][1]))
    assert decided.fps.dtype == np.uint64 and (np.diff(decided.fps) > 0).all()  # no strings
    assert (decided.positions(pa.array(["not-a-candidate"])) == -1).all()


def test_the_search_diagnostic_reads_verdicts_as_integers(tiny_chain):
    decided = committed_decisions(tiny_chain.tables)
    group, seed, passed = decided_outcomes(tiny_chain.tables)
    assert len(group) == len(decided) > 0 and passed.sum() == decided.passed.sum() > 0
    assert group.dtype == np.int32 and seed.dtype == np.int16  # 4 + 2 bytes a candidate
    ids = tiny_chain.tables.read("candidates", ["candidate_id"]).column("candidate_id")
    at = decided.positions(ids)
    known = [c for c, a in zip(ids.to_pylist(), at, strict=True) if a >= 0]
    assert diagnose_groups(group, seed, passed) == diagnose(known, decided.passed[at[at >= 0]])


def test_preference_pairs_come_a_slice_of_mined_triplets_at_a_time(tiny_chain, monkeypatch):
    tables = tiny_chain.tables
    mined = tables.by_origin("mined")
    whole = preference_mod.preference_pairs(
        mined,
        tables.read("candidates", list(preference_mod.CANDIDATE_COLUMNS)),
        {n: tables.read(n, list(preference_mod.VERDICT_COLUMNS)) for n in tables.enabled},
        1,
    )
    assert whole.num_rows > 0
    calls: list[tuple[int, int]] = []
    pairs = preference_mod.preference_pairs

    def counting(m: pa.Table, cands: pa.Table, verdicts: Any, per_group: int) -> pa.Table:
        calls.append((m.num_rows, cands.num_rows))
        return pairs(m, cands, verdicts, per_group)

    monkeypatch.setattr(preference_mod, "preference_pairs", counting)
    sliced = preference_mod.run_preference_pairs(tables, 1, slice_rows=2)
    assert sliced.equals(whole)  # the same rows in the same order
    assert len(calls) == -(-mined.num_rows // 2)
    total = tables.count("candidates")
    assert all(m <= 2 and c < total for m, c in calls)  # a slice's sources' candidates only


def test_chains_come_a_slice_at_a_time_as_the_whole_table_gives_them(tiny_chain, monkeypatch):
    source = tiny_chain.tables.triplets_name()
    whole = chains(tiny_chain.tables.triplets())
    assert whole.num_rows > 3
    monkeypatch.setattr(slices, "SLICE_ROWS", 3)
    parts = list(iter_chains(tiny_chain.tables, source))
    assert [p.num_rows for p in parts[:-1]] == [3] * (len(parts) - 1)
    assert pa.concat_tables(parts).equals(whole)


def _allocators(env: dict[str, str]) -> list[str]:
    """What a fresh process that imports nhr, then pyarrow, allocates with: Arrow's pool
    and the arena cap its children inherit."""
    code = (
        "import os, nhr, pyarrow as pa; "
        "print(pa.default_memory_pool().backend_name, os.environ.get('MALLOC_ARENA_MAX'))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in env and "ARROW" not in k}
    clean.pop("MALLOC_ARENA_MAX", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_run_process_allocates_through_allocators_that_give_memory_back():
    assert _allocators({}) == ["system", str(allocators.ARENA_MAX)]
    # a user's own choice is kept
    assert _allocators({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc", "MALLOC_ARENA_MAX": "8"}) == [
        "mimalloc",
        "8",
    ]


def _copy_run(tiny_chain: Any, tmp_path: Any, monkeypatch: Any, **params: Any) -> Any:
    """A copy of the tiny run (dedup off: its path is whole-table), opened, whose
    whole-table steps hold slices of 3 rows; every wide table read whole is recorded in
    ``pipe.wide_reads``."""
    from conftest import TINY

    from nhr.pipeline import Pipeline

    copy = tmp_path / "run"
    shutil.copytree(tiny_chain.store.root, copy)
    pipe = Pipeline.open(copy, {**TINY, "DEDUP": False, **params}, progress=False)
    monkeypatch.setattr(slices, "SLICE_ROWS", 3)
    pipe.wide_reads = []
    read = tables_mod.RunTables.read

    def recording(self: Any, name: str, columns: Any = None) -> pa.Table:
        out = read(self, name, columns)
        if columns is None:
            pipe.wide_reads.append(name)
        return out

    monkeypatch.setattr(tables_mod.RunTables, "read", recording)
    return pipe


def _parts_written(monkeypatch: Any) -> list[tuple[str, int]]:
    """(table, rows) of every shard committed from now on."""
    written: list[tuple[str, int]] = []
    commit = TableStore.commit

    def counting(self: Any, name: str, table: pa.Table, *args: Any, **kw: Any) -> Any:
        written.append((name, table.num_rows))
        return commit(self, name, table, *args, **kw)

    monkeypatch.setattr(TableStore, "commit", counting)
    return written


def _taken(monkeypatch: Any) -> list[int]:
    """Rows of every wide read by position from now on."""
    sizes: list[int] = []
    take = slices.RowsAt.take

    def counting(self: Any, pos: np.ndarray) -> pa.Table:
        sizes.append(len(pos))
        return take(self, pos)

    monkeypatch.setattr(slices.RowsAt, "take", counting)
    return sizes


@pytest.mark.parametrize("validate", [True, False])
def test_assemble_holds_a_slice_of_wide_rows_and_writes_the_same_table(
    tiny_chain, tmp_path, monkeypatch, validate
):
    pipe = _copy_run(tiny_chain, tmp_path, monkeypatch, COMPOSE_VALIDATE=validate)
    assert pipe.cfg.bootstrap.compose_validate == validate
    forwards, inverses, drops = pipe.bootstrap.consistent()  # the whole-table reference
    composed, compose_drops = pipe.bootstrap.composed(forwards)
    whole = pa.concat_tables([forwards, inverses, composed])
    assert forwards.num_rows > 6 and inverses.num_rows > 3 and composed.num_rows > 0
    pipe.wide_reads.clear()
    written, taken = _parts_written(monkeypatch), _taken(monkeypatch)
    stats = pipe.bootstrap.assemble().stats
    assert pipe.wide_reads == []  # no wide table is read whole
    assert pipe.tables.read("triplets").equals(whole)  # the same rows in the same order
    parts = [rows for name, rows in written if name == "triplets"]
    assert len(parts) > 3 and max(parts) <= 3 and max(taken) <= 3
    assert len(pipe.store.tables.entries("triplets")) == len(parts)
    assert stats["rows_out"] == whole.num_rows
    assert stats["drops_by_reason"] == dict(sorted((drops + compose_drops).items()))
    assert list(stats["by_origin"]) == ["mined", "inverted", "composed"]
    assert pipe.bootstrap.assemble().stats["seconds"] == stats["seconds"]  # recorded: done


def test_compose_jobs_are_planned_from_narrow_columns(tiny_chain, tmp_path, monkeypatch):
    pipe = _copy_run(tiny_chain, tmp_path, monkeypatch)
    forwards, inverses, _ = pipe.bootstrap.consistent()
    cfg = pipe.cfg.bootstrap
    whole = plan_compose_jobs(forwards, inverses, cfg.compose_max_pairs, pipe.cfg.run.seed)
    pipe.wide_reads.clear()
    assert pipe.bootstrap.compose_jobs().equals(whole) and whole.num_rows > 0
    assert pipe.wide_reads == []
    monkeypatch.setattr(composition_mod, "PAIR_SOURCES", 2)  # pairs of 2 sources at a time
    assert pipe.bootstrap.compose_jobs().equals(whole)


def test_a_write_in_parts_cut_short_leaves_a_step_that_is_not_done(
    tiny_chain, tmp_path, monkeypatch
):
    pipe = _copy_run(tiny_chain, tmp_path, monkeypatch)
    pipe.bootstrap.assemble()
    whole = pipe.tables.read("triplets")
    shutil.rmtree(pipe.store.tables.folder("triplets"))  # its stats stay, its table is gone
    parts = Bootstrap._parts

    def cut(self: Any, *args: Any) -> Any:
        stream = parts(self, *args)
        yield next(stream)
        raise KeyboardInterrupt

    monkeypatch.setattr(Bootstrap, "_parts", cut)
    with pytest.raises(KeyboardInterrupt):
        pipe.bootstrap.assemble()
    assert 0 < pipe.tables.count("triplets") < whole.num_rows  # a part is in...
    assert pipe.store.read_stats("triplets") is None  # ...and the step is not done
    monkeypatch.setattr(Bootstrap, "_parts", parts)
    pipe.bootstrap.assemble()
    assert pipe.tables.read("triplets").equals(whole)
    assert pipe.store.read_stats("triplets")["rows_out"] == whole.num_rows


def test_selection_ranks_from_narrow_columns_and_writes_the_same_mined_table(
    tiny_chain, tmp_path, monkeypatch
):
    pipe = _copy_run(tiny_chain, tmp_path, monkeypatch)
    whole, drops = select_argmax(  # the whole-table reference
        pipe.tables.read("candidates"),
        pipe.tables.read("validator"),
        pipe.tables.read("sources"),
        pipe.tables.read("prompts"),
    )
    assert whole.num_rows > 6
    pipe.store.delete("stats/mined.json")
    pipe.wide_reads.clear()
    written, streams = _parts_written(monkeypatch), []
    stream = tables_mod.RunTables.stream

    def recording(self: Any, name: str, *args: Any, **kw: Any) -> Any:
        streams.append(name)
        return stream(self, name, *args, **kw)

    monkeypatch.setattr(tables_mod.RunTables, "stream", recording)
    stats = pipe.select().stats
    assert pipe.wide_reads == []
    assert pipe.tables.read("mined").equals(whole)
    parts = [rows for name, rows in written if name == "mined"]
    assert len(parts) > 2 and max(parts) <= 3
    assert streams.count("candidates") == 2  # the keys, then the winners' columns
    assert stats["rows_out"] == whole.num_rows and stats["drops_by_reason"] == drops


def test_rows_in_slices_are_the_rows_asked_for_in_order(tiny_chain, monkeypatch):
    tables = tiny_chain.tables
    whole = tables.read("candidates", ["candidate_id", "image"])
    monkeypatch.setattr(slices, "SLICE_ROWS", 4)
    pos = np.random.default_rng(0).permutation(whole.num_rows)[:11]
    got = list(slices.rows_in_slices(tables, "candidates", ["candidate_id", "image"], pos))
    assert [t.num_rows for t in got] == [4, 4, 3]
    assert pa.concat_tables(got).equals(whole.take(pa.array(pos)))
    assert list(slices.rows_in_slices(tables, "candidates", ["image"], pos[:0])) == []
    with pytest.raises(IndexError, match="not in table 'candidates'"):
        list(slices.rows_in_slices(tables, "candidates", ["image"], np.array([whole.num_rows])))


def test_judge_error_shares_count_a_batch_at_a_time(tiny_chain, monkeypatch):
    tables = tiny_chain.tables
    whole = judge_error_shares(tables)
    monkeypatch.setattr(
        tables_mod.RunTables,
        "stream",
        lambda self, name, columns=None, batch_rows=0: tables_mod.TableStream(
            self, name, columns, 2
        ),
    )
    assert judge_error_shares(tables) == whole and whole["validator"]


def test_spilled_rows_give_back_the_rows_asked_for_a_batch_at_a_time(monkeypatch):
    table = pa.table({"image": [f"blobs/{i:03d}.png" for i in range(103)], "n": list(range(103))})
    spilled = slices.SpilledRows(table, batch_rows=10)
    path = spilled.path
    read: list[int] = []
    get_batch = spilled._reader.get_batch
    monkeypatch.setattr(spilled._reader, "get_batch", lambda i: read.append(i) or get_batch(i))
    rng = np.random.default_rng(0)
    for pos in (rng.integers(0, 103, 40), np.arange(103), np.array([102, 0, 0, 55]), []):
        pos = np.asarray(pos, dtype=np.int64)
        got = spilled.take(pos)
        assert got.schema == table.schema
        assert got.to_pylist() == [table.slice(int(p), 1).to_pylist()[0] for p in pos]
    # each call reads each batch it needs once: the batches of [102, 0, 0, 55]
    assert read[-3:] == [0, 5, 10]
    with pytest.raises(IndexError, match="103 spilled rows"):
        spilled.take(np.array([103]))
    with pytest.raises(TypeError, match="cannot be pickled"):
        __import__("pickle").dumps(spilled)
    assert os.path.exists(path)
    spilled.close()
    assert not os.path.exists(path)


def test_input_keys_are_every_entry_s_keys_in_order(tmp_path):
    store = RunStore(tmp_path)
    keys = [[f"k{i}-{j}" for j in range(n)] for i, n in enumerate((3, 0, 1, 50))]
    keys.append(["ünï", "", "x" * 300])
    for part in keys:
        store.tables.commit("t", pa.table({"x": list(range(len(part)))}), part, {})
    got = store.tables.input_keys("t")
    assert got.type == pa.string() and got.to_pylist() == [k for part in keys for k in part]
    assert RunStore(tmp_path / "empty").tables.input_keys("t").to_pylist() == []
