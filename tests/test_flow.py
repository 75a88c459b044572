"""The streamed chain: a chain's rows equal its stages run one by one, bounded queues,
retried batches dropped, the budget, errors naming the stage, exactly-once under
SIGKILL."""

import signal
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from conftest import TINY
from fakes.chain import Finish, Grow, Judge, jobs, links, run_one_by_one, table_rows
from test_runner import _run_kill

from nhr.engines.base import Done, Engine, Link, outputs_forward
from nhr.engines.local import LocalEngine
from nhr.pipeline import Pipeline
from nhr.records import Record
from nhr.runner import PAUSE, Runner
from nhr.store import RunStore

N = 120


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, list[tuple]]:
    """The rows of the three stages run one by one."""
    runner = Runner(RunStore(tmp_path_factory.mktemp("seq")), batch_size=7, progress=False)
    run_one_by_one(runner, N)
    return table_rows(runner)


@pytest.mark.parametrize(("workers", "sizes"), [(1, (5, 3, 8)), (3, (16, 4, 2))])
def test_a_chain_gives_the_rows_of_its_stages_one_by_one(tmp_path, expected, workers, sizes):
    runner = Runner(RunStore(tmp_path), workers=workers, progress=False, shard_rows=25)
    results = runner.run_chain(links(Grow(), Judge(), Finish(), sizes), jobs(N))
    assert table_rows(runner) == expected
    grown, judged, finished = (r.stats for r in results)
    assert [r.table for r in results] == ["grown", "judged", "finished"]
    assert grown["rows_in"] == N and grown["processed_rows"] == N
    assert judged["rows_in"] == judged["processed_rows"] == len(expected["grown"])
    assert finished["rows_in"] == sum(v[1] for v in expected["judged"])
    assert finished["rows_out"] == len(expected["finished"])
    assert runner.store.read_stats("finished")["rows_out"] == finished["rows_out"]
    # a rerun is a resumed no-op for every link
    again = runner.run_chain(links(Grow(), Judge(), Finish(), sizes), jobs(N))
    assert [r.stats["processed_rows"] for r in again] == [0, 0, 0]
    assert [r.stats["rows_in"] for r in again] == [r.stats["rows_in"] for r in results]
    assert table_rows(runner) == expected


def test_downstream_links_get_only_what_link_zero_makes_now(tmp_path, expected):
    """Rows committed upstream before the chain ran do not flow again (a stage run on
    its own over its input table judges those)."""
    runner = Runner(RunStore(tmp_path), batch_size=7, progress=False)
    runner.run(Grow(), jobs(N // 2))
    runner.run(Judge(), runner.store.tables.read("grown"))
    runner.run_chain(links(Grow(), Judge(), Finish(), (9, 9, 9)), jobs(N))
    rows = table_rows(runner)
    assert rows["grown"] == expected["grown"] and rows["judged"] == expected["judged"]
    # finish saw only what link 0 redid (the first half's squares never flowed again)
    assert set(rows["finished"]) < set(expected["finished"])


class Counted(Grow):
    """Grow that counts the rows it made."""

    made = 0
    lock = threading.Lock()

    def process_batch(self, rows):
        out = super().process_batch(rows)
        with Counted.lock:
            Counted.made += len(out)
        return out


class SlowJudge(Judge):
    """A judge that takes its time and records how many rows waited for it."""

    started = 0
    most_queued = 0

    def process_batch(self, rows):
        with Counted.lock:
            SlowJudge.started += len(rows)
            SlowJudge.most_queued = max(SlowJudge.most_queued, Counted.made - SlowJudge.started)
        time.sleep(0.01)
        return super().process_batch(rows)


def test_a_slow_judge_back_pressures_link_zero(tmp_path):
    engine = LocalEngine(workers=1, queue_batches=2)
    chain = [Link(Counted(), 4, forward=outputs_forward), Link(SlowJudge(), 3)]
    runner = Runner(RunStore(tmp_path), progress=False, engine=engine)
    runner.run_chain(chain, jobs(200))
    bound = engine.bound(chain[1], 1)  # 2 batches of 3 queued
    # at most the bound plus one batch of link 0 (4 jobs, up to 8 rows) wait
    assert SlowJudge.most_queued <= bound + 8
    assert SlowJudge.started == Counted.made == runner.store.tables.count("judged")
    assert SlowJudge.started > 200


class Twice(Engine):
    """An engine that yields every finished batch twice, as a retrying cluster might."""

    def __init__(self) -> None:
        self.inner = LocalEngine(2)

    def stream(self, chain: Sequence[Link], batches: Iterable[list[Record]]) -> Iterator[Done]:
        for done in self.inner.stream(chain, batches):
            yield done
            yield done


def test_a_batch_yielded_twice_is_committed_once(tmp_path, expected):
    runner = Runner(RunStore(tmp_path), progress=False, engine=Twice(), shard_rows=10)
    results = runner.run_chain(links(Grow(), Judge(), Finish(), (6, 5, 4)), jobs(N))
    assert table_rows(runner) == expected
    assert results[0].stats["processed_rows"] == N


def test_the_budget_stops_link_zero_and_downstream_finishes(tmp_path, expected):
    class SlowGrow(Grow):
        def process_batch(self, rows):
            time.sleep(0.05)
            return super().process_batch(rows)

    runner = Runner(RunStore(tmp_path), progress=False)
    results = runner.run_chain(
        links(SlowGrow(), Judge(), Finish(), (2, 3, 3)), jobs(20), budget_seconds=0.12
    )
    grown, judged, finished = (r.stats for r in results)
    assert 4 <= grown["processed_rows"] <= 8
    assert grown["not_scheduled"] == 20 - grown["processed_rows"]
    # everything link 0 made was judged and finished
    rows = table_rows(runner)
    assert judged["rows_out"] == grown["rows_out"] == len(rows["judged"])
    assert judged["not_scheduled"] == finished["not_scheduled"] == 0
    assert set(rows["finished"]) <= set(expected["finished"])
    assert finished["rows_out"] == sum(v[1] for v in rows["judged"])


def test_an_error_in_link_two_names_the_stage_and_a_rerun_completes(tmp_path, expected):
    class Broken(Finish):
        def process_batch(self, rows):
            if any(r.square_id == "p0050" for r in rows):
                raise ValueError("bad square")
            return super().process_batch(rows)

    runner = Runner(RunStore(tmp_path), workers=2, progress=False, shard_rows=8)
    with pytest.raises(ValueError, match="bad square") as err:
        runner.run_chain(links(Grow(), Judge(), Broken(), (4, 4, 4)), jobs(N))
    assert any("in stage 'finished'" in note for note in err.value.__notes__)
    committed = table_rows(runner)
    assert len(committed["grown"]) < len(expected["grown"])
    runner.run_chain(links(Grow(), Judge(), Finish(), (4, 4, 4)), jobs(N))
    assert table_rows(runner) == expected


# ---- exactly-once under SIGKILL -------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})

    from fakes.chain import Finish, Grow, Judge, jobs, links
    from nhr.runner import Runner
    from nhr.store import RunStore
    from nhr.store.shards import TableStore

    run_dir, where, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = [0]

    def killing(method):
        def wrapped(self, *args):
            seen[0] += 1
            if seen[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return method(self, *args)

        return wrapped

    if where == "grow":
        Grow.process_batch = killing(Grow.process_batch)
    if where == "finish":
        Finish.process_batch = killing(Finish.process_batch)
    if where == "before_entry":  # a shard written, its ledger entry not yet
        TableStore._put_entry = killing(TableStore._put_entry)
    chain = links(Grow(), Judge(), Finish(), (8, 5, 3))
    runner = Runner(RunStore(run_dir), workers=2, progress=False, shard_rows=20)
    runner.run_chain(chain, (jobs(300)[i : i + 70] for i in range(0, 300, 70)))
    """
)


@pytest.fixture(scope="module")
def kill_script(tmp_path_factory) -> tuple[Path, dict[str, list[tuple]]]:
    """The kill script, and the rows of its run without a kill."""
    root = tmp_path_factory.mktemp("chainkill")
    script = root / "chain.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    assert _run_kill(script, root / "clean", "none", 0) == 0
    return script, table_rows(RunStore(root / "clean"))


@pytest.mark.parametrize(("where", "at"), [("grow", 20), ("finish", 30), ("before_entry", 7)])
def test_sigkill_in_a_chain_then_rerun_gives_the_uninterrupted_rows(
    tmp_path, kill_script, where, at
):
    script, expected = kill_script
    killed = tmp_path / "killed"
    assert _run_kill(script, killed, where, at) == -signal.SIGKILL
    tables = RunStore(killed).tables
    assert sum(tables.count(t) for t in expected if tables.exists(t)) < sum(
        len(v) for v in expected.values()
    )
    assert _run_kill(script, killed, "none", 0) == 0
    assert table_rows(RunStore(killed)) == expected


# ---- sources stream to the gate ------------------------------------------------------
def _columns(pipe: Pipeline, table: str) -> list[tuple]:
    t = pipe.table(table)
    t = t.drop([c for c in ("seconds",) if c in t.column_names])  # measured, not computed
    return sorted(tuple(row.values()) for row in t.to_pylist())


def test_sources_stream_to_the_gate_with_the_rows_of_the_stages_one_by_one(tmp_path):
    streamed = Pipeline.open(tmp_path / "streamed", TINY, progress=False)
    streamed.prompts()
    sources = streamed.sources()
    assert streamed.runner.store.tables.count("plausibility") == sources.rows_out > 0
    gate = streamed.gate()  # a resumed no-op that still writes its stats
    assert gate.stats["processed_rows"] == 0 and gate.rows_in == sources.rows_out

    alone = Pipeline.open(tmp_path / "alone", TINY, progress=False)

    def one_by_one(links, inputs, *args, **kwargs):
        return type(alone.runner).run_chain(alone.runner, links[:1], inputs)  # no gate

    alone.prompts()
    alone.runner.run_chain = one_by_one
    alone.sources()
    assert not alone.runner.store.tables.exists("plausibility")
    assert alone.gate().stats["processed_rows"] == sources.rows_out
    for table in ("sources", "plausibility"):
        assert _columns(streamed, table) == _columns(alone, table)


@pytest.mark.parametrize("workers", [1, 2])
def test_inputs_that_pause_resume_as_batches_finish(tmp_path, expected, workers):
    """The second half of the inputs comes only once the judge has judged every square
    grown from the first half (seen through ``observe``): the inputs pause meanwhile,
    and the rows are those of the stages run one by one.

    The pause is certain, whatever the threads' timing: the engine asks for more inputs
    in the round after it yields link 0's last batch, when that batch's squares are
    still queued for the judge or in flight there."""
    runner = Runner(RunStore(tmp_path), workers=workers, progress=False)
    chain = links(Grow(), Judge(), Finish(), (5, 3, 4))
    first, second = jobs(N)[: N // 2], jobs(N)[N // 2 :]
    seen: dict[int, int] = {}
    grown = [0]
    pauses = [0]

    def observe(done: Done) -> None:
        seen[done.link] = seen.get(done.link, 0) + len(done.inputs)
        if done.link == 0:
            grown[0] += len(done.outputs)

    def inputs() -> Iterator[object]:
        yield first
        while seen.get(0, 0) < len(first) or seen.get(1, 0) < grown[0]:
            pauses[0] += 1
            yield PAUSE
        yield second

    runner.run_chain(chain, inputs(), observe=observe)
    assert table_rows(runner) == expected
    assert pauses[0] >= 1
    assert seen[0] == N


def test_inputs_that_pause_with_nothing_in_flight_are_an_error(tmp_path):
    runner = Runner(RunStore(tmp_path), workers=1, progress=False)

    def inputs() -> Iterator[object]:
        yield PAUSE

    with pytest.raises(RuntimeError, match=r"grown.*paused with no batch in flight"):
        runner.run_chain(links(Grow(), Judge(), Finish(), (5, 3, 4)), inputs())


@pytest.mark.parametrize(
    "search", [{"SEARCH": "adaptive"}, {"SEARCH": "adaptive", "MAX_EDIT_JOBS": 120}]
)
def test_a_run_writes_each_stats_file_once(tmp_path, monkeypatch, search):
    """Every step of a run writes its stats once (the filters' steps after the mining
    loop find nothing to do and keep the loop's record), streamed or round by round."""
    from collections import Counter

    from conftest import run_chain

    writes: Counter[str] = Counter()
    write = RunStore.write_stats

    def counting(self: RunStore, table: str, stats: dict) -> None:
        writes[table] += 1
        write(self, table, stats)

    monkeypatch.setattr(RunStore, "write_stats", counting)
    pipe = run_chain(tmp_path / "run", {**search, "WORKERS": 1})
    assert {"candidates", "validator", "mining", "mined", "triplets", "export"} <= set(writes)
    assert max(writes.values()) == 1, writes
    rounds = pipe.mining()["rounds"]
    assert len(rounds) > 1 and pipe.store.read_stats("candidates")["rounds"] == len(rounds)


def test_a_missing_table_names_the_notebook_that_makes_it(tmp_path):
    from nhr.errors import RunFolderError

    with pytest.raises(RunFolderError, match=r"'mined' does not exist .* notebooks/05_validate"):
        RunStore(tmp_path / "run").tables.read("mined")
