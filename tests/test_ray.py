"""The Ray engine on a local multi-node cluster (a head and two workers with logical
GPUs): the engine contract (every batch of every link once, survivors forwarded on the
workers, usage per batch), errors as themselves, windows pulled lazily; the tiny
synthetic chain with ENGINE ray exports the rows of the local engine, also with a
worker node removed mid-run, and after a SIGKILL of its driver and a rerun; the
missing-Ray error."""

import builtins
import os
import pickle
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pytest

from nhr.engines.base import Done, Link, outputs_forward, passed_forward
from nhr.errors import BackendError, ConfigError
from nhr.records import PromptJob, Record, Verdict

ray = pytest.importorskip("ray")

from nhr.engines.ray import RayEngine, RaySettings, _rows  # noqa: E402


@dataclass(frozen=True)
class Square(Record):
    key: ClassVar[str] = "prompt_id"
    prompt_id: str
    value: int


@dataclass(frozen=True)
class Cube(Record):
    key: ClassVar[str] = "cube_id"
    cube_id: str
    prompt_id: str
    value: int
    group: int


class SquareStage:
    """cpu work: a square per job."""

    name = "squares"
    input_type = PromptJob
    output_type = Square
    work = "cpu"

    def __init__(self, sleep: float = 0.0, poison: str = "") -> None:
        self.sleep = sleep
        self.poison = poison
        self.ready = False

    def setup(self) -> None:
        self.ready = True

    def usage(self) -> dict[str, float]:
        return {}

    def process_batch(self, rows: list[PromptJob]) -> list[Square]:
        assert self.ready, "setup() was not called"
        if any(r.prompt_id == self.poison for r in rows):
            raise BackendError(f"refused {self.poison}", "do not poison it")
        time.sleep(self.sleep)
        return [Square(r.prompt_id, r.seed * r.seed) for r in rows]


class PlusOneStage:
    """cpu work: each square plus one."""

    name = "plus_one"
    input_type = Square
    output_type = Square
    work = "cpu"

    def setup(self) -> None:
        pass

    def usage(self) -> dict[str, float]:
        return {}

    def process_batch(self, rows: list[Square]) -> list[Square]:
        return [Square(r.prompt_id, r.value + 1) for r in rows]


class FakeClient:
    """Records the share of the API limits its actor was given."""

    def __init__(self) -> None:
        self.share = 1.0

    def share_limits(self, fraction: float) -> None:
        self.share *= fraction


class JudgeStage:
    """io work with API usage: passes squares divisible by 3."""

    name = "verdicts"
    input_type = Square
    output_type = Verdict
    work = "io"

    def __init__(self) -> None:
        self.calls = 0
        self.client = FakeClient()

    def setup(self) -> None:
        pass

    def usage(self) -> dict[str, float]:
        return {"calls": float(self.calls), "tokens_in": 10.0 * self.calls}

    def process_batch(self, rows: list[Square]) -> list[Verdict]:
        self.calls += 1
        return [
            Verdict(
                r.prompt_id,
                r.value % 3 == 0,
                "ok",
                5.0,
                5.0,
                f'{{"share": {self.client.share}}}',
                "j",
                "v1",
                None,
            )
            for r in rows
        ]


class CubeStage:
    """device work: two cubes per survivor; records how its calls were grouped."""

    name = "cubes"
    input_type = Square
    output_type = Cube
    work = "device"

    def setup(self) -> None:
        import ray as ray_

        self.gpus = ray_.get_gpu_ids()

    def usage(self) -> dict[str, float]:
        return {}

    def process_batch(self, rows: list[Square]) -> list[Cube]:
        groups = {r.value % 2 for r in rows}
        assert len(groups) == 1, "the batcher groups one parity per call"
        return [
            Cube(f"{r.prompt_id}-{j}", r.prompt_id, r.value * j, len(rows))
            for r in rows
            for j in (1, 2)
        ]


def by_parity(rows: Any, most: int) -> Any:
    """A batcher: calls of one parity, at most ``most`` each."""
    open_: dict[int, list[Square]] = {}
    for r in rows:
        group = open_.setdefault(r.value % 2, [])
        group.append(r)
        if len(group) == most:
            yield open_.pop(r.value % 2)
    yield from (g for g in open_.values() if g)


def chain(sleep: float = 0.0) -> list[Link]:
    return [
        Link(SquareStage(sleep), 4, outputs_forward),
        Link(JudgeStage(), 3, passed_forward),
        Link(CubeStage(), 2, None, by_parity),
    ]


def jobs(n: int) -> list[PromptJob]:
    return [PromptJob(f"p{i:04d}", i, "") for i in range(n)]


def batches(n: int, size: int, pulled: list[int] | None = None) -> Any:
    rows = jobs(n)
    for i in range(0, n, size):
        if pulled is not None:
            pulled.append(i)
        yield rows[i : i + size]


def expected(n: int) -> dict[int, set]:
    """Each link's (input id, output) pairs, computed directly."""
    squares = [Square(j.prompt_id, j.seed * j.seed) for j in jobs(n)]
    passed = [s for s in squares if s.value % 3 == 0]
    return {
        0: {(s.prompt_id, s) for s in squares},
        1: {(s.prompt_id, s.value % 3 == 0) for s in squares},
        2: {(s.prompt_id, s.value * j) for s in passed for j in (1, 2)},
    }


def observed(dones: list[Done]) -> dict[int, set]:
    out: dict[int, set] = {0: set(), 1: set(), 2: set()}
    for d in dones:
        if d.link == 0:
            out[0] |= set(zip([r.id for r in d.inputs], d.outputs, strict=True))
        elif d.link == 1:
            out[1] |= {(r.id, v.passed) for r, v in zip(d.inputs, d.outputs, strict=True)}
        else:
            out[2] |= {(c.prompt_id, c.value) for c in d.outputs}
    return out


def input_ids(dones: list[Done], link: int) -> list[str]:
    return [r.id for d in dones if d.link == link for r in d.inputs]


@pytest.fixture(scope="module")
def cluster():
    """A head (no GPU) and two worker nodes with one logical GPU each."""
    from ray.cluster_utils import Cluster

    # the nodes' workers import this module (its stages) by name
    saved = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, str(Path(here).parent), saved) if p
    )
    for attempt in range(3):  # a node may miss Ray's fixed 30 s start-up on a busy machine
        c = Cluster()
        try:
            c.add_node(num_cpus=2, include_dashboard=False)
            workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
            break
        except Exception:
            c.shutdown()
            if attempt == 2:
                raise
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def test_every_batch_of_every_link_comes_once(cluster):
    engine = RayEngine(RaySettings(window_rows=1000, io_actors=2), progress=False)
    dones = list(engine.stream(chain(), batches(60, 5)))
    assert observed(dones) == expected(60)
    for link in (0, 1):
        ids = input_ids(dones, link)
        assert sorted(ids) == sorted(j.prompt_id for j in jobs(60))
    survivors = input_ids(dones, 2)
    assert len(survivors) == len(set(survivors)) == 20
    assert all(len(d.inputs) <= 4 for d in dones if d.link == 0)
    assert all(len(d.inputs) <= 2 for d in dones if d.link == 2)
    # usage comes per batch from the actors, and sums to one call per judge batch
    judged = [d for d in dones if d.link == 1]
    assert sum(d.usage.get("calls", 0) for d in judged) == len(judged)
    assert all(d.usage == {"calls": 1.0, "tokens_in": 10.0} for d in judged)
    # each of the two judge actors holds half of the API limits
    assert {v.details for d in judged for v in d.outputs} == {'{"share": 0.5}'}
    info = engine.describe()
    assert info["duplicates_dropped"] == 0 and info["windows"] == 1
    places = {name.split(":")[1]: p for name, p in info["links"].items()}
    assert places["cubes"]["kind"] == "device" and places["cubes"]["num_gpus"] == 1.0
    assert places["cubes"]["actors"] == 2  # one per GPU of the cluster
    assert places["verdicts"]["kind"] == "io" and places["squares"]["kind"] == "cpu"
    assert info["cluster"]["resources"]["GPU"] == 2.0
    engine.close()
    assert ray.is_initialized()  # a joined session stays open


def test_windows_pull_batches_lazily(cluster):
    pulled: list[int] = []
    engine = RayEngine(RaySettings(window_rows=20), progress=False)
    links = [Link(SquareStage(), 4, outputs_forward), Link(PlusOneStage(), 3)]
    stream = engine.stream(links, batches(40, 5, pulled))
    first = next(stream)
    assert len(pulled) == 4  # the first window of 20 rows, nothing beyond it
    dones = [first, *stream]
    assert engine.describe()["windows"] == 2
    for link in (0, 1):
        assert sorted(input_ids(dones, link)) == [j.prompt_id for j in jobs(40)]


def test_a_stage_error_comes_back_as_itself(cluster):
    engine = RayEngine(RaySettings(), progress=False)
    with pytest.raises(BackendError) as err:
        list(engine.stream([Link(SquareStage(poison="p0007"), 4)], batches(20, 5)))
    assert "refused p0007" in str(err.value)
    assert any("in stage 'squares'" in note for note in err.value.__notes__)


def test_a_recomputed_batch_is_dropped_once_and_counted():
    engine = RayEngine(RaySettings(), progress=False)
    rows = jobs(3)
    done = Done(0, rows, [Square(r.prompt_id, 1) for r in rows], 0.1)
    block = _rows(1, [], [pickle.dumps([done]), pickle.dumps([done])], [])
    seen = [set(), set()]

    class Bar:
        def update(self, n: int) -> None:
            pass

    assert list(engine._finished(block, seen, Bar())) == [done]
    assert engine.describe()["duplicates_dropped"] == 1
    part = Done(0, rows[:1] + jobs(5)[3:], [], 0.1)
    with pytest.raises(RuntimeError, match="overlaps an earlier one"):
        list(engine._finished(_rows(1, [], [pickle.dumps([part])], []), seen, Bar()))


def test_without_ray_the_error_names_what_to_install(monkeypatch):
    from nhr.engines import ray as ray_engine

    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError) as err:
        ray_engine.import_ray()
    assert "pip install 'ray[data]==2.60.0'" in str(err.value) and "ENGINE local" in str(err.value)
    assert "ray" in sys.modules  # only the import was refused


def test_rows_carry_items_and_dones():
    table = _rows(2, jobs(3), [b"x"], [])
    assert table.num_rows == 3 and table.column("link").to_pylist() == [2, 2, 2]
    assert table.column("done").to_pylist() == [[b"x"], None, None]
    empty = _rows(2, [], [b"x"], [b"e"])
    assert empty.num_rows == 1 and empty.column("link").to_pylist() == [-1]
    assert isinstance(empty, pa.Table)


# ------------------------------------------------------------------ the synthetic chain


def tiny_ray() -> dict:
    """The tiny chain's parameters, shards of a few rows (imported here, not at the top:
    Ray workers import this module for its stages, and conftest imports the pipeline)."""
    from conftest import TINY

    return {**TINY, "SHARD_ROWS": 16, "SHARD_FLUSH_SECONDS": 0.0}


DRIVER = """
import sys
from nhr.config import PipelineConfig
from nhr.pipeline import Pipeline

if __name__ == "__main__":
    params = {**eval(sys.argv[2]), "ENGINE": "ray"}
    pipe = Pipeline(sys.argv[1], PipelineConfig.from_params(params), progress=False)
    pipe.run_chain("select")
    pipe.export()
    pipe.close()
"""


def exported(run_dir: Path) -> list[tuple[str, str, str]]:
    """The exported rows as sorted (source, instruction, edited) hashes."""
    import hashlib

    import pyarrow.parquet as pq

    rows = []
    for shard in sorted((run_dir / "dataset" / "data").glob("train-*.parquet")):
        t = pq.read_table(shard, columns=["source_image", "instruction", "edited_image"])
        for src, text, edited in zip(
            *(t.column(c).to_pylist() for c in t.column_names), strict=True
        ):
            rows.append(
                (
                    hashlib.sha256(src["bytes"]).hexdigest(),
                    hashlib.sha256(text.encode()).hexdigest(),
                    hashlib.sha256(edited["bytes"]).hexdigest(),
                )
            )
    return sorted(rows)


def mine(run_dir: Path, params: dict) -> Any:
    from nhr.config import PipelineConfig
    from nhr.pipeline import Pipeline

    pipe = Pipeline(run_dir, PipelineConfig.from_params(params), progress=False)
    try:
        pipe.run_chain("select")
        pipe.export()
    finally:
        pipe.close()
    return pipe


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory) -> list[tuple[str, str, str]]:
    """The exported rows of the tiny chain on the local engine."""
    run = tmp_path_factory.mktemp("local") / "run"
    mine(run, {**tiny_ray(), "ENGINE": "local"})
    rows = exported(run)
    assert len(rows) >= 5
    return rows


def test_a_sigkilled_driver_then_a_rerun_with_a_node_lost_gives_the_local_rows(
    cluster, local_rows, tmp_path
):
    """A driver joins the cluster through RAY_ADDRESS and is SIGKILLed once it has
    committed sources; the rerun (ENGINE ray) loses a worker node while it makes
    candidates (Ray retries that node's tasks elsewhere); the export has exactly the
    local engine's rows, and the stats sum what every worker did."""
    import json
    import signal
    import subprocess

    c, workers = cluster
    run = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": c.address}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run), repr(tiny_ray())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for_rows(run, "sources", proc.poll), proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not (run / "dataset").exists()  # killed before the end

    removed = threading.Event()

    def remove_when_editing() -> None:
        if wait_for_rows(run, "candidates", lambda: None):
            c.remove_node(workers[1])
            removed.set()

    killer = threading.Thread(target=remove_when_editing, daemon=True)
    killer.start()
    try:
        pipe = mine(run, {**tiny_ray(), "ENGINE": "ray"})
    finally:
        killer.join(timeout=130)
        workers[1] = c.add_node(num_cpus=2, num_gpus=1)
    assert removed.is_set()
    assert exported(run) == local_rows
    stats = json.loads((run / "stats" / "candidates.json").read_text())
    assert stats["rows_out"] == pipe.table("candidates").num_rows > 0
    assert stats["processed_rows"] + stats["resumed_rows"] == stats["rows_in"]


def wait_for_rows(run: Path, table: str, ended: Any, seconds: float = 150.0) -> bool:
    """Wait until ``table`` has a committed shard; False if ``ended()`` says the
    writer is gone or time runs out."""
    folder = run / "tables" / table / "ledger"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and ended() is None:
        if any(folder.glob("*.parquet")):
            return True
        time.sleep(0.02)
    return False


def test_a_remote_client_pickles_and_shares_its_limits(tmp_path):
    """An API stage travels to Ray actors: its client pickles without its loop thread,
    reopens its cache, and each actor's copy keeps a share of the caps."""
    from nhr.backends.api_client import ClientSettings, RemoteClient, RequestCache
    from nhr.backends.openai_compat import OpenAITransport

    client = RemoteClient(
        OpenAITransport("http://127.0.0.1:9/v1"),
        ClientSettings(concurrency=16, rpm=600.0, tpm=1e6),
        RequestCache(tmp_path / "cache.sqlite"),
    )
    client.usage.add(calls=3)
    copy = pickle.loads(pickle.dumps(client))
    copy.share_limits(0.25)
    assert (copy.settings.concurrency, copy.settings.rpm, copy.settings.tpm) == (4, 150.0, 2.5e5)
    assert copy._rpm.rate == 150.0 / 60 and client.settings.rpm == 600.0
    assert copy.usage.snapshot()["calls"] == 3 and copy.cache.path == client.cache.path
    assert copy.run(_answer()) == 42  # a fresh loop thread of its own
    copy.close()
    client.close()


async def _answer() -> int:
    return 42
