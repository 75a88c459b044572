"""The local engine's executors: threads or worker processes, by what a stage declares."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pytest

from nhr.engines.base import Link, outputs_forward
from nhr.engines.local import LocalEngine
from nhr.errors import ImageError
from nhr.executors import (
    CPU,
    DEVICE,
    IO,
    ProcessExecutor,
    StageError,
    ThreadExecutor,
    executor_for,
    resolve_workers,
    work_of,
)
from nhr.records import PromptJob, Record, from_table
from nhr.runner import Runner
from nhr.stages.base import Stage
from nhr.stages.filters import LowLevelStage
from nhr.stages.gate import PlausibilityStage
from nhr.store import RunStore
from tests.conftest import ROOT, run_chain


@dataclass(frozen=True)
class Seen(Record):
    key: ClassVar[str] = "prompt_id"
    prompt_id: str
    value: int
    pid: int
    setups: int


class CpuStage(Stage[PromptJob, Seen]):
    """Squares seeds in whatever process it runs in; fails on ``fail_at`` if set."""

    name = "cpu_squares"
    input_type = PromptJob
    output_type = Seen
    work: ClassVar[str | None] = CPU

    def __init__(self, fail_at: str = "", unpicklable: bool = False, sleep: float = 0.0) -> None:
        self.fail_at = fail_at
        self.unpicklable = unpicklable
        self.sleep = sleep
        self.setups = 0

    def settings(self) -> dict[str, Any]:
        return {}

    def setup(self) -> None:
        self.setups += 1

    def process_batch(self, rows: list[PromptJob]) -> list[Seen]:
        time.sleep(self.sleep)
        for r in rows:
            if r.prompt_id == self.fail_at:
                if self.unpicklable:
                    raise _Unpicklable(r.prompt_id)
                raise ImageError(f"image of {r.prompt_id} cannot be read", "run `nhr repair`")
        return [Seen(r.prompt_id, r.seed * r.seed, os.getpid(), self.setups) for r in rows]


class _Unpicklable(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"bad row {key}")
        self.lock = __import__("threading").Lock()  # a lock cannot be pickled


def _jobs(n: int) -> list[PromptJob]:
    return [PromptJob(f"p{i:03d}", i, "") for i in range(n)]


def _backend(work: str | None) -> Any:
    return type("B", (), {"work": work})()


def test_work_comes_from_declarations_not_names(tmp_path):
    from nhr.backends.plumbing import AcceptAllJudge
    from nhr.backends.synthetic import SyntheticJudge

    blobs = RunStore(tmp_path).blobs
    assert work_of(LowLevelStage(blobs)) == CPU
    assert work_of(PlausibilityStage(SyntheticJudge(), blobs)) == CPU
    assert work_of(PlausibilityStage(AcceptAllJudge(), blobs)) == IO  # undeclared: threads
    assert work_of(PlausibilityStage(_backend(DEVICE), blobs)) == DEVICE
    stage = LowLevelStage(blobs)
    stage.extra = _backend(IO)  # a cpu stage that also waits on an API runs in threads
    stage.backend_fields = ("extra",)
    assert work_of(stage) == IO
    with pytest.raises(ValueError, match="declare one of cpu, io, device"):
        work_of(PlausibilityStage(_backend("gpu"), blobs))


def test_executor_choice_and_worker_count(tmp_path):
    assert resolve_workers(3) == 3
    assert resolve_workers(0) == len(os.sched_getaffinity(0))
    blobs = RunStore(tmp_path).blobs
    assert isinstance(executor_for(LowLevelStage(blobs), 2), ProcessExecutor)
    assert isinstance(executor_for(LowLevelStage(blobs), 1), ThreadExecutor)
    device = executor_for(PlausibilityStage(_backend(DEVICE), blobs), 4)
    assert isinstance(device, ThreadExecutor) and device.slots == 1
    api = executor_for(PlausibilityStage(_backend(IO), blobs), 4)
    assert isinstance(api, ThreadExecutor) and api.slots == 4


def _rows(runner: Runner) -> list[Seen]:
    """The records the CPU stage wrote."""
    return from_table(runner.store.tables.read(CpuStage.name, Seen.schema()), Seen)


def test_cpu_stage_runs_in_workers_set_up_once_each(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=3, workers=2, progress=False)
    runner.run(CpuStage(), _jobs(20))
    rows = _rows(runner)
    assert sorted(r.value for r in rows) == sorted(i * i for i in range(20))
    assert os.getpid() not in {r.pid for r in rows}
    assert {r.setups for r in rows} == {1}  # each worker set the stage up once
    one = Runner(RunStore(tmp_path / "one"), batch_size=3, workers=1, progress=False)
    one.run(CpuStage(), _jobs(20))
    same = _rows(one)
    assert {r.pid for r in same} == {os.getpid()}  # one worker: in this process
    assert sorted((r.prompt_id, r.value) for r in same) == sorted(
        (r.prompt_id, r.value) for r in rows
    )


def test_a_worker_error_surfaces_as_itself_with_the_stage_name(tmp_path):
    runner = Runner(RunStore(tmp_path), batch_size=2, workers=2, progress=False)
    with pytest.raises(ImageError, match="image of p007 cannot be read") as caught:
        runner.run(CpuStage(fail_at="p007"), _jobs(12))
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "in stage 'cpu_squares'" in notes and "from 'p006'" in notes
    other = Runner(RunStore(tmp_path / "other"), batch_size=2, workers=2, progress=False)
    with pytest.raises(StageError, match="_Unpicklable: bad row p003") as caught:
        other.run(CpuStage(fail_at="p003", unpicklable=True), _jobs(6))
    assert "in stage 'cpu_squares'" in " ".join(caught.value.__notes__)
    # the pool of the failed runs was replaced; a rerun completes the rest
    done = runner.run(CpuStage(), _jobs(12))
    assert done.stats["rows_out"] == 12
    assert done.stats["resumed_rows"] + done.stats["processed_rows"] == 12


def test_thread_errors_carry_the_stage_name_too(tmp_path):
    class Threaded(CpuStage):
        work: ClassVar[str | None] = IO

    runner = Runner(RunStore(tmp_path), batch_size=2, workers=2, progress=False)
    with pytest.raises(ImageError) as caught:
        runner.run(Threaded(fail_at="p001"), _jobs(4))
    assert "in stage 'cpu_squares'" in " ".join(caught.value.__notes__)


OWNER = """
import sys, time
from nhr.executors import ProcessExecutor
from nhr.records import PromptJob
from test_executors import CpuStage

if __name__ == "__main__":
    ex = ProcessExecutor(CpuStage(sleep=30.0), 2)
    futures = [ex.submit([PromptJob(f"p{i}", i, "")]) for i in range(2)]
    import nhr.executors as mod
    from multiprocessing import forkserver
    deadline = time.monotonic() + 60
    while len(mod._POOL.executor._processes) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [*mod._POOL.executor._processes, forkserver._forkserver._forkserver_pid]
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_killing_the_owner_leaves_no_worker_behind():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = owner.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3 and all(_alive(p) for p in pids), line
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "workers outlived their SIGKILLed owner"


def _exported(run_dir: Path) -> list[tuple]:
    """Every exported row, images replaced by the sha256 of their bytes."""
    out = []
    for path in sorted((run_dir / "dataset" / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            for k, v in row.items():
                if isinstance(v, dict) and "bytes" in v:
                    row[k] = hashlib.sha256(v["bytes"]).hexdigest()
                elif isinstance(v, list) and v and isinstance(v[0], dict):
                    row[k] = [hashlib.sha256(i["bytes"]).hexdigest() for i in v]
            out.append((path.name.split("-")[0], tuple(sorted(row.items(), key=str))))
    return sorted(out, key=str)


def test_one_worker_and_all_cores_export_the_same_rows(tmp_path):
    small = {"N_PROMPTS": 4, "M_EDIT_SEEDS": 2}
    one = run_chain(tmp_path / "one", {**small, "WORKERS": 1})
    many = run_chain(tmp_path / "many", {**small, "WORKERS": 2})
    a, b = _exported(one.store.root), _exported(many.store.root)
    trains = [dict(r) for name, r in a if name == "train"]
    assert len(trains) > 5 and {"triplet_id", "instruction", "edited_image"} <= set(trains[0])
    assert a == b
    import nhr.executors

    assert nhr.executors.STARTED[2] > 0  # processes ran
    assert nhr.executors._POOL is None  # and ended with their chain


class ThreadOf(Stage[PromptJob, PromptJob]):
    """Passes its rows on, noting the thread that ran each batch."""

    input_type = PromptJob
    output_type = PromptJob

    def __init__(self) -> None:
        self.threads: set[int] = set()

    def process_batch(self, rows: list[PromptJob]) -> list[PromptJob]:
        self.threads.add(threading.get_ident())
        return rows


class CpuLink(ThreadOf):
    name = "cpu_link"
    work: ClassVar[str | None] = CPU


class IoLink(ThreadOf):
    name = "io_link"
    work: ClassVar[str | None] = IO


def test_a_chain_runs_cpu_links_in_its_own_thread_and_io_links_in_theirs():
    cpu, io = CpuLink(), IoLink()
    links = [Link(cpu, 4, outputs_forward), Link(io, 4)]
    jobs = [PromptJob(f"p{i}", i, "") for i in range(40)]
    done = list(LocalEngine(workers=1).stream(links, (jobs[i : i + 4] for i in range(0, 40, 4))))
    assert sum(len(d.outputs) for d in done if d.link == 1) == 40
    # one worker: the cpu link in the scheduler's thread, no handoff per batch
    assert cpu.threads == {threading.get_ident()}
    assert io.threads and threading.get_ident() not in io.threads  # its waits overlap
