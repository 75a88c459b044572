"""The stage runner: resume after a crash (and a SIGKILL), settings check, budget,
concurrency, lock, columnar and chunked inputs, shards sized apart from batches."""

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from nhr import runner as runner_mod
from nhr.engines.base import Link, outputs_forward
from nhr.engines.local import LocalEngine
from nhr.errors import RunFolderError
from nhr.lock import RunLock
from nhr.records import PromptJob, Record, Verdict, from_table, to_table
from nhr.runner import WRITER_LOCK, Runner
from nhr.stages.base import Stage
from nhr.store import RunStore


@dataclass(frozen=True)
class Square(Record):
    key: ClassVar[str] = "prompt_id"
    prompt_id: str
    value: int


class SquareStage(Stage[PromptJob, Square]):
    name = "squares"
    input_type = PromptJob
    output_type = Square

    def __init__(self, crash_at: int | None = None, factor: int = 1) -> None:
        self.crash_at = crash_at
        self.factor = factor
        self.seen: list[str] = []

    def settings(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def process_batch(self, rows: list[PromptJob]) -> list[Square]:
        out = []
        for r in rows:
            if self.crash_at is not None and len(self.seen) >= self.crash_at:
                raise RuntimeError("boom")
            self.seen.append(r.prompt_id)
            out.append(Square(r.prompt_id, r.seed * r.seed * self.factor))
        return out


def _jobs(n: int, start: int = 0) -> list[PromptJob]:
    return [PromptJob(f"p{i:03d}", i, "") for i in range(start, start + n)]


def _rows(runner: Runner, name: str = "squares", cls: type[Record] = Square) -> list[Any]:
    return from_table(runner.store.tables.read(name, cls.schema()), cls)


def test_resume_after_crash_repeats_nothing_and_loses_nothing(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run(SquareStage(crash_at=10), _jobs(23))
    partial = runner.store.tables.read("squares").num_rows
    assert partial == 8  # two whole batches were written; the third died mid-batch
    again = SquareStage()
    result = runner.run(again, _jobs(23))
    assert len(again.seen) == 23 - 8
    rows = _rows(runner)
    assert sorted(r.prompt_id for r in rows) == [f"p{i:03d}" for i in range(23)]
    assert {r.value for r in rows} == {i * i for i in range(23)}
    assert result.stats["resumed_rows"] == 8 and result.stats["rows_out"] == 23
    # a third run does no work at all
    third = SquareStage()
    assert runner.run(third, _jobs(23)).rows_out == 23 and third.seen == []


def test_other_settings_are_refused(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=4, progress=False)
    runner.run(SquareStage(), _jobs(5))
    with pytest.raises(RunFolderError, match="written with other settings"):
        runner.run(SquareStage(factor=2), _jobs(5))


def test_budget_stops_new_batches_and_counts_the_rest(tmp_path):
    class Slow(SquareStage):
        def process_batch(self, rows):
            import time

            time.sleep(0.05)
            return super().process_batch(rows)

    runner = Runner(RunStore(tmp_path), batch_size=2, progress=False)
    result = runner.run(Slow(), _jobs(20), budget_seconds=0.12)
    assert 4 <= result.rows_out <= 8 and len(_rows(runner)) == result.rows_out
    assert result.stats["not_scheduled"] == 20 - result.rows_out
    # the budget survives a resume: the seconds already spent count against it
    again = Slow()
    resumed = runner.run(again, _jobs(20), budget_seconds=0.12)
    assert len(again.seen) <= 2 and resumed.stats["resumed_rows"] == result.rows_out


def test_workers_give_the_same_rows(tmp_path):
    one = Runner(RunStore(tmp_path / "a"), batch_size=3, workers=1, progress=False)
    many = Runner(RunStore(tmp_path / "b"), batch_size=3, workers=4, progress=False)
    one.run(SquareStage(), _jobs(31))
    many.run(SquareStage(), _jobs(31))
    a = sorted(tuple(r.to_row().items()) for r in _rows(one))
    b = sorted(tuple(r.to_row().items()) for r in _rows(many))
    assert a == b


class PlusStage(Stage[Square, Square]):
    """Each square plus one."""

    name = "plus"
    input_type = Square
    output_type = Square

    def process_batch(self, rows: list[Square]) -> list[Square]:
        return [Square(r.prompt_id, r.value + 1) for r in rows]


class CountingEngine(LocalEngine):
    """The local engine, telling in ``describe`` how many inputs its last stream's
    batches had (link 1's batches are partial or full as the timing falls; the rows
    are not)."""

    name = "counting"

    def stream(self, links: Any, batches: Any) -> Any:
        self.rows = 0
        for done in super().stream(links, batches):
            self.rows += len(done.inputs)
            yield done

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rows": self.rows}


class RetryingEngine(LocalEngine):
    """The local engine, yielding some finished batches a second time, as an engine
    that retries a batch whose worker was lost after it finished may: at once, and
    again after the rest (by then committed), each time as a copy of the inputs."""

    name = "retrying"

    def stream(self, links: Any, batches: Any) -> Any:
        late = []
        for n, done in enumerate(super().stream(links, batches)):
            yield done
            if n % 3 == 0:
                yield replace(done, inputs=list(done.inputs))
            if n % 4 == 1:
                late.append(replace(done, inputs=list(done.inputs)))
        yield from late


def test_a_batch_yielded_again_is_dropped_on_every_link(tmp_path):
    def chain(engine: LocalEngine | None, where: str) -> tuple[list[Any], list[Any], Any]:
        runner = Runner(
            RunStore(tmp_path / where), batch_size=3, progress=False, shard_rows=4, engine=engine
        )
        links = [Link(SquareStage(), 3, outputs_forward), Link(PlusStage(), 2)]
        results = runner.run_chain(links, _jobs(20))
        return _rows(runner), _rows(runner, "plus"), results

    squares, plus, _ = chain(None, "plain")
    again_squares, again_plus, results = chain(RetryingEngine(workers=1), "retried")
    assert again_squares == squares and again_plus == plus and len(plus) == 20
    dropped = [r.stats["dropped_batches"] for r in results]
    assert dropped[0] > 0 and dropped[1] > 0


def _pairs(rows: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """A batcher giving calls of ``size`` rows (the last may be short), as new lists."""
    call: list[Record] = []
    for row in rows:
        call.append(row)
        if len(call) == size:
            yield call
            call = []
    if call:
        yield call


@pytest.mark.parametrize("engine", ["local", "retrying"])
def test_link_zero_keeps_no_key_set_where_the_engine_hands_back_its_lists(
    tmp_path, monkeypatch, engine
):
    """The local engine hands back every call of link 0 (a batcher's too) as the list it
    was fed: link 0 keeps no set of its taken keys, and a call handed back again is
    still dropped; the next link keeps its set."""
    added: list[int] = []
    real_add = runner_mod._Taken.add
    monkeypatch.setattr(
        runner_mod._Taken, "add", lambda self, fps: added.append(len(fps)) or real_add(self, fps)
    )
    retrying = engine == "retrying"
    runner = Runner(
        RunStore(tmp_path),
        batch_size=3,
        progress=False,
        shard_rows=4,
        engine=RetryingEngine(workers=1) if retrying else LocalEngine(workers=1),
    )
    links = [Link(SquareStage(), 2, outputs_forward, batcher=_pairs), Link(PlusStage(), 2)]
    first, _ = runner.run_chain(links, _jobs(21))
    assert [s.value for s in _rows(runner)] == sorted(i * i for i in range(21))
    assert sorted(s.value for s in _rows(runner, "plus")) == sorted(i * i + 1 for i in range(21))
    assert sum(added) == 21  # link 1's keys only
    assert (first.stats.get("dropped_batches", 0) > 0) == retrying


def test_stats_record_the_engine_and_how_it_ran_the_chain(tmp_path):
    local = Runner(RunStore(tmp_path / "a"), batch_size=3, workers=2, progress=False)
    stats = local.run(SquareStage(), _jobs(10)).stats
    assert stats["engine"] == {"name": "local", "workers": 2, "queue_batches": 4}
    assert RunStore(tmp_path / "a").read_stats("squares")["engine"] == stats["engine"]
    # written after the stream: what the engine did for this chain, link by link alike
    engine = CountingEngine(workers=1)
    runner = Runner(RunStore(tmp_path / "b"), batch_size=3, progress=False, engine=engine)
    links = [Link(SquareStage(), 3, outputs_forward), Link(PlusStage(), 2)]
    first, second = runner.run_chain(links, _jobs(7))
    assert first.stats["engine"] == second.stats["engine"]
    assert first.stats["engine"] == {
        "name": "counting",
        "workers": 1,
        "queue_batches": 4,
        "rows": 7 + 7,
    }


def test_a_live_writer_is_named(tmp_path):
    store = RunStore(tmp_path)
    runner = Runner(store, progress=False)
    import multiprocessing as mp

    ready, stop = mp.Event(), mp.Event()

    def hold() -> None:
        with RunLock(tmp_path / WRITER_LOCK, "test"):
            ready.set()
            stop.wait(10)

    proc = mp.get_context("fork").Process(target=hold)
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(RunFolderError, match=rf"being written by process {proc.pid}"):
            runner.run(SquareStage(), _jobs(2))
    finally:
        stop.set()
        proc.join()
    assert runner.run(SquareStage(), _jobs(2)).rows_out == 2  # a dead holder blocks nothing


def test_duplicate_input_keys_are_refused(tmp_path):
    runner = Runner(RunStore(tmp_path), progress=False)
    with pytest.raises(ValueError, match="occurs twice"):
        runner.run(SquareStage(), _jobs(3) + _jobs(1))


def test_duplicate_keys_across_chunks_are_refused(tmp_path):
    runner = Runner(RunStore(tmp_path), progress=False)
    chunks = [_jobs(3), to_table(_jobs(2, start=5), PromptJob), _jobs(1, start=6)]
    with pytest.raises(ValueError, match="'p006' occurs twice"):
        runner.run(SquareStage(), iter(chunks))


def test_tables_and_chunks_give_the_rows_of_a_list(tmp_path):
    runs = {
        "list": _jobs(40),
        "table": to_table(_jobs(40), PromptJob),
        "chunks": (c for c in [_jobs(15), to_table(_jobs(25, start=15), PromptJob)]),
    }
    got = {}
    for name, inputs in runs.items():
        runner = Runner(RunStore(tmp_path / name), batch_size=6, progress=False)
        stats = runner.run(SquareStage(), inputs).stats
        assert (stats["rows_in"], stats["processed_rows"], stats["rows_out"]) == (40, 40, 40)
        got[name] = sorted((r.prompt_id, r.value) for r in _rows(runner))
    assert got["list"] == got["table"] == got["chunks"]


def test_shards_are_sized_by_rows_not_by_batches(tmp_path):
    store = RunStore(tmp_path)
    runner = Runner(store, batch_size=4, progress=False, shard_rows=30)
    stats = runner.run(SquareStage(), _jobs(100)).stats
    # 25 batches of 4 rows close a shard at every 32 rows: 32 + 32 + 32 + 4
    assert [e.rows for e in store.tables.entries("squares")] == [32, 32, 32, 4]
    assert stats["shards"] == 4 and store.tables.count("squares") == 100
    assert len(list((store.tables.folder("squares") / "data").iterdir())) == 4
    assert sorted(store.tables.input_keys("squares").to_pylist()) == [
        j.prompt_id for j in _jobs(100)
    ]
    # a flush interval of 0 s commits every batch at once
    every = Runner(RunStore(tmp_path / "b"), batch_size=4, progress=False, flush_seconds=0)
    assert every.run(SquareStage(), _jobs(10)).stats["shards"] == 3


class JudgeStage(Stage[PromptJob, Verdict]):
    name = "verdicts"
    input_type = PromptJob
    output_type = Verdict

    def settings(self) -> dict[str, Any]:
        return {}

    def process_batch(self, rows: list[PromptJob]) -> list[Verdict]:
        return [
            Verdict(
                r.prompt_id,
                r.seed % 3 == 0,
                "ok" if r.seed % 3 == 0 else ("dark" if r.seed % 3 == 1 else "judge_error"),
                float(r.seed),
                None,
                "{}",
                "j",
                "v1",
                "timeout: slow" if r.seed % 3 == 2 else None,
            )
            for r in rows
        ]


def test_stats_come_from_the_ledger(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=5, progress=False, shard_rows=7)
    stats = runner.run(JudgeStage(), _jobs(30)).stats
    assert stats["drops_by_reason"] == {"dark": 10, "judge_error": 10}
    assert stats["errors_by_kind"] == {"timeout": 10}
    rows = _rows(runner, "verdicts", Verdict)
    assert sum(not v.passed for v in rows) == 20 and all(v.aesthetic is None for v in rows)


def test_an_old_run_folder_is_named(tmp_path):
    store = RunStore(tmp_path)
    store.tables.folder("squares").mkdir(parents=True)
    (store.tables.folder("squares") / "part-0123.parquet").write_bytes(b"old")
    with pytest.raises(RunFolderError, match=r"written by an older nhr.*use a new run folder"):
        Runner(store, progress=False).run(SquareStage(), _jobs(3))


# ---- exactly-once under SIGKILL -------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from dataclasses import dataclass
    from typing import ClassVar

    from nhr.records import PromptJob, Record
    from nhr.runner import Runner
    from nhr.stages.base import Stage
    from nhr.store import RunStore
    from nhr.store.shards import TableStore

    run_dir, where, at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    @dataclass(frozen=True)
    class Cube(Record):
        key: ClassVar[str] = "prompt_id"
        prompt_id: str
        value: int

    class CubeStage(Stage[PromptJob, Cube]):
        name = "cubes"
        input_type = PromptJob
        output_type = Cube
        seen = 0

        def settings(self):
            return {}

        def process_batch(self, rows):
            out = []
            for r in rows:
                CubeStage.seen += 1
                if where == "process" and CubeStage.seen == at:
                    os.kill(os.getpid(), signal.SIGKILL)
                out.append(Cube(r.prompt_id, r.seed ** 3))
                if r.seed % 7 == 0:  # some inputs give two rows, some none
                    out.append(Cube(r.prompt_id + "b", -r.seed))
            return [o for o in out if o.value % 5 != 1]

    def killing(method):
        calls = [0]

        def wrapped(self, *args):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return method(self, *args)

        return wrapped

    if where == "before_shard":
        TableStore._put_shard = killing(TableStore._put_shard)
    if where == "before_entry":  # the shard is written, its ledger entry not yet
        TableStore._put_entry = killing(TableStore._put_entry)
    jobs = [PromptJob(f"p{i:04d}", i, "") for i in range(int(os.environ.get("N", "300")))]
    chunks = (jobs[i : i + 70] for i in range(0, len(jobs), 70))
    Runner(RunStore(run_dir), batch_size=8, progress=False, shard_rows=40).run(CubeStage(), chunks)
    """
)


def _run_kill(script: Path, run_dir: Path, where: str, at: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(script), str(run_dir), where, str(at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


def _table_rows(run_dir: Path) -> list[tuple]:
    table = RunStore(run_dir).tables.read("cubes")
    return sorted(zip(*(table.column(c).to_pylist() for c in ("prompt_id", "value")), strict=True))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[tuple]]:
    """The kill script, and the rows of its run without a kill."""
    root = tmp_path_factory.mktemp("kill")
    script = root / "stage.py"
    script.write_text(KILL_SCRIPT)
    assert _run_kill(script, root / "clean", "none", 0) == 0
    return script, _table_rows(root / "clean")


@pytest.mark.parametrize(
    ("where", "at"),
    [
        ("process", 5),
        ("process", 130),
        ("before_shard", 2),
        ("before_entry", 1),
        ("before_entry", 3),
    ],
)
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_rows(
    tmp_path, uninterrupted, where, at
):
    script, expected = uninterrupted
    killed = tmp_path / "killed"
    assert _run_kill(script, killed, where, at) == -signal.SIGKILL
    tables = RunStore(killed).tables
    committed = tables.count("cubes") if tables.exists("cubes") else 0
    assert committed < len(expected)
    data = tables.folder("cubes") / "data"
    if where == "before_entry":  # an orphan shard: written, never committed, never read
        assert len(list(data.iterdir())) == len(tables.entries("cubes")) + 1
    assert _run_kill(script, killed, "none", 0) == 0
    assert _table_rows(killed) == expected
    # the orphan shard and temp files are gone: every shard left is committed
    tables = RunStore(killed).tables
    assert sorted(p.name for p in data.iterdir()) == sorted(
        e.shard for e in tables.entries("cubes")
    )
