"""The stage runner: resume after a crash, settings check, budget, concurrency, lock."""

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from nhr.errors import RunFolderError
from nhr.lock import RunLock
from nhr.records import PromptJob, Record
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


def _jobs(n: int) -> list[PromptJob]:
    return [PromptJob(f"p{i:03d}", i, "") for i in range(n)]


def test_resume_after_crash_repeats_nothing_and_loses_nothing(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run(SquareStage(crash_at=10), _jobs(23))
    partial = runner.store.tables.read("squares").num_rows
    assert partial == 8  # two whole batches were written; the third died mid-batch
    again = SquareStage()
    result = runner.run(again, _jobs(23))
    assert len(again.seen) == 23 - 8
    assert sorted(r.prompt_id for r in result.rows) == [f"p{i:03d}" for i in range(23)]
    assert {r.value for r in result.rows} == {i * i for i in range(23)}
    assert result.stats["resumed_rows"] == 8 and result.stats["rows_out"] == 23
    # a third run does no work at all
    third = SquareStage()
    assert len(runner.run(third, _jobs(23)).rows) == 23 and third.seen == []


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
    assert 4 <= len(result.rows) <= 8
    assert result.stats["not_scheduled"] == 20 - len(result.rows)


def test_workers_give_the_same_rows(tmp_path):
    one = Runner(RunStore(tmp_path / "a"), batch_size=3, workers=1, progress=False)
    many = Runner(RunStore(tmp_path / "b"), batch_size=3, workers=4, progress=False)
    a = sorted(r.to_row().items() for r in one.run(SquareStage(), _jobs(31)).rows)
    b = sorted(r.to_row().items() for r in many.run(SquareStage(), _jobs(31)).rows)
    assert a == b


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
    assert len(runner.run(SquareStage(), _jobs(2)).rows) == 2  # a dead holder blocks nothing


def test_duplicate_input_keys_are_refused(tmp_path):
    runner = Runner(RunStore(tmp_path), progress=False)
    with pytest.raises(ValueError, match="occurs twice"):
        runner.run(SquareStage(), _jobs(3) + _jobs(1))
