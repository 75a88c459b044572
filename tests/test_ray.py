"""The Ray engine on a local multi-node cluster (a head and a worker node, each with a
logical GPU), one cluster for the module: the engine contract (every batch of every link
once, survivors forwarded on the workers, usage per batch, API limits shared, placement
by kind), errors as themselves, windows pulled lazily, nothing started for a chain with
nothing to do; the tiny synthetic chain with ENGINE ray and its run folder on S3 (moto on
127.0.0.1) exports the rows of the local engine after a SIGKILL of its driver and a rerun
that loses the worker node; `nhr run` without a cluster named starts one for all its
notebooks and stops it, and that cluster refuses a client without its token, while one
named through RAY_ADDRESS that accepts such clients gets a warning; the missing-Ray
error."""

import builtins
import json
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
from nhr.hashing import KeySet
from nhr.records import PromptJob, Record, Verdict
from nhr.stages.base import Stage

ray = pytest.importorskip("ray")

from nhr.engines.ray import RayEngine, RaySettings, _rows, agent_ports  # noqa: E402


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


class SquareStage(Stage):
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


class PlusOneStage(Stage):
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


class JudgeStage(Stage):
    """io work with API usage: passes squares divisible by 3."""

    name = "verdicts"
    input_type = Square
    output_type = Verdict
    work = "io"
    backend_fields = ("client",)

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


class CubeStage(Stage):
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
def cluster(request):
    """A head and a worker node, one logical GPU each (CPUs are logical too: enough for
    every operator's actors and tasks, the worker's lost included), without token
    authentication (as `ray start` makes a cluster before Ray 2.61). moto's S3 server
    (where it is installed) starts first: every node's processes inherit the AWS
    environment."""
    from ray.cluster_utils import Cluster

    try:
        request.getfixturevalue("s3")
    except pytest.skip.Exception:
        pass  # no moto: the S3 test skips, the others run
    # the nodes' workers import this module (its stages) by name
    saved = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, str(Path(here).parent), saved) if p
    )
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    for attempt in range(3):  # a node may miss Ray's fixed 30 s start-up on a busy machine
        c = Cluster()
        try:
            with agent_ports():  # the raylets wait for no agent
                # a worker node whose raylet a busy machine starves for a few health
                # checks is not dead: the head waits for 10 missed checks, not Ray's 5
                c.add_node(
                    num_cpus=4,
                    num_gpus=1,
                    include_dashboard=False,
                    _system_config={"health_check_failure_threshold": 10},
                )
                workers = [c.add_node(num_cpus=2, num_gpus=1)]
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
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def test_every_batch_of_every_link_comes_once(cluster):
    engine = RayEngine(RaySettings(window_rows=20, io_actors=2), progress=False)
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
    assert info["duplicates_dropped"] == 0 and info["windows"] == 3 and "driver" not in info
    places = {name.split(":")[1]: p for name, p in info["links"].items()}
    # the actors live across the windows: one setup (model load) per actor per chain
    assert list(places["cubes"]["loads"].values()) == [1, 1]
    assert list(places["verdicts"]["loads"].values()) == [1, 1]
    # the cpu link's actors (the engine's pool) set it up once each, on first use
    assert set(places["squares"]["loads"].values()) == {1}
    assert places["cubes"]["kind"] == "device" and places["cubes"]["num_gpus"] == 1.0
    assert places["cubes"]["actors"] == 2  # one per GPU of the cluster
    assert places["verdicts"]["kind"] == "io" and places["verdicts"]["actors"] == 2
    assert places["squares"]["kind"] == "cpu" and places["squares"]["num_cpus"] == 1.0
    assert info["cluster"]["resources"]["GPU"] == 2.0 and info["cluster"]["nodes"] == 2
    assert info["cluster"]["address"] == cluster[0].address
    assert json.loads(json.dumps(info)) == info  # fit for a stage's stats
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
    info = engine.describe()  # of this stream alone
    assert info["windows"] == 2 and set(info["links"]) == {"0:squares", "1:plus_one"}
    for link in (0, 1):
        assert sorted(input_ids(dones, link)) == [j.prompt_id for j in jobs(40)]


def test_pools_serve_every_window_and_chain_of_an_engine(cluster):
    """A cpu link's actors are the engine's pool: made once, each stage set up once per
    actor per chain however many windows, the same actors for the next chain, ended by
    close(); so are an io link's (set up per chain, each with its share of the limits)."""
    engine = RayEngine(RaySettings(window_rows=10, cpu_tasks=2), progress=False)
    links = [Link(SquareStage(), 5, outputs_forward), Link(PlusOneStage(), 5)]
    dones = list(engine.stream(links, batches(30, 5)))
    assert sorted(input_ids(dones, 1)) == [j.prompt_id for j in jobs(30)]
    first = engine.describe()
    assert first["windows"] == 3
    pool = set(first["links"]["0:squares"]["loads"])
    assert first["links"]["0:squares"]["actors"] == 2 and 1 <= len(pool) <= 2
    for name in ("0:squares", "1:plus_one"):
        assert set(first["links"][name]["loads"].values()) == {1}
    list(engine.stream([Link(SquareStage(), 5)], batches(20, 5)))
    again = set(engine.describe()["links"]["0:squares"]["loads"])
    assert again and again <= pool | set(first["links"]["1:plus_one"]["loads"])
    judged = []
    for _ in range(2):
        judge = [Link(SquareStage(), 5, outputs_forward), Link(JudgeStage(), 5)]
        dones = list(engine.stream(judge, batches(20, 5)))
        assert {v.details for d in dones if d.link == 1 for v in d.outputs} == {'{"share": 0.5}'}
        judged.append(engine.describe()["links"]["1:verdicts"]["loads"])
    assert judged[0] == judged[1] and list(judged[0].values()) == [1, 1]
    actors = list(engine._pools["cpu"]) + list(engine._pools["io0"])
    engine.close()
    for actor in actors:
        # ray.kill is asynchronous: a call sent at once may still be answered before the
        # kill lands, so ask again until the actor is gone (a minute at most)
        deadline = time.monotonic() + 60
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(actor.__ray_ready__.remote(), timeout=60)
                time.sleep(0.5)


def test_nhr_run_warns_once_of_a_named_cluster_open_without_a_token(cluster, monkeypatch, caplog):
    """`nhr run` with RAY_ADDRESS naming a cluster that answers a client without a token
    warns once, naming the fix; it joins it rather than starting one."""
    from nhr.config import PipelineConfig
    from nhr.engines import run_cluster

    monkeypatch.setenv("RAY_ADDRESS", cluster[0].address)
    cfg = PipelineConfig.from_params({"ENGINE": "ray"})
    with caplog.at_level("WARNING", logger="nhr.engines.ray"), run_cluster(cfg) as started:
        assert started is None
    warned = [r.getMessage() for r in caplog.records if "authentication token" in r.getMessage()]
    assert len(warned) == 1
    assert cluster[0].address in warned[0] and "RAY_AUTH_MODE=token" in warned[0]


def test_a_stage_error_comes_back_as_itself(cluster):
    engine = RayEngine(RaySettings(driver_rows=0), progress=False)
    with pytest.raises(BackendError) as err:
        list(engine.stream([Link(SquareStage(poison="p0007"), 4)], batches(20, 5)))
    assert "refused p0007" in str(err.value)
    assert any("in stage 'squares'" in note for note in err.value.__notes__)


def test_a_chain_with_nothing_to_do_starts_nothing(monkeypatch):
    engine = RayEngine(RaySettings(), progress=False)
    monkeypatch.setattr(engine, "connect", lambda: pytest.fail("connected to Ray"))
    assert list(engine.stream(chain(), iter([]))) == []
    assert engine.describe()["windows"] == 0


class Connected(Exception):
    """Raised where the engine would connect to Ray."""


def test_a_small_chain_without_a_device_stage_runs_on_the_driver(monkeypatch):
    """At most driver_rows inputs and no device stage: the chain runs on the driver
    (the local engine), with the rows the cluster makes; one row more, or a device
    stage, and it goes to the cluster."""
    engine = RayEngine(RaySettings(driver_rows=20), progress=False, workers=1)

    def connect() -> None:
        raise Connected

    monkeypatch.setattr(engine, "connect", connect)
    links = [Link(SquareStage(), 4, outputs_forward), Link(JudgeStage(), 3)]
    dones = list(engine.stream(links, batches(20, 5)))
    want = expected(20)
    assert observed(dones)[0] == want[0] and observed(dones)[1] == want[1]
    info = engine.describe()
    assert info["driver"]["name"] == "local" and "links" not in info
    assert info["batches"] == len(dones)
    with pytest.raises(Connected):
        list(engine.stream(links, batches(21, 5)))
    assert "driver" not in engine.describe()
    with pytest.raises(Connected):
        list(engine.stream(chain(), batches(8, 4)))


def test_an_engine_imports_ray_only_for_a_chain_on_the_cluster():
    """ENGINE ray with nothing for the cluster imports no Ray; Ray's first import leaves
    out jsonschema's IRI grammar (seconds of CPU), and that package imports after."""
    import subprocess

    code = (
        "import sys, importlib.util\n"
        "from nhr.config import PipelineConfig\n"
        "from nhr.engines import engine_from_config\n"
        "engine = engine_from_config(PipelineConfig.from_params({'ENGINE': 'ray'}), False)\n"
        "assert list(engine.stream([], [])) == [] and engine.describe()['windows'] == 0\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "from nhr.engines.ray import IRI_GRAMMAR, import_ray\n"
        "import_ray()\n"
        "assert IRI_GRAMMAR not in sys.modules, 'IRI grammar imported'\n"
        "if importlib.util.find_spec(IRI_GRAMMAR):\n"
        "    importlib.import_module(IRI_GRAMMAR)\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_recomputed_batch_is_dropped_once_and_counted():
    engine = RayEngine(RaySettings(), progress=False)
    rows = jobs(3)
    done = Done(0, rows, [Square(r.prompt_id, 1) for r in rows], 0.1)
    block = _rows(1, [], [pickle.dumps([done]), pickle.dumps([done])], [])
    seen = [KeySet(), KeySet()]

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
    """The tiny chain's parameters, made smaller (on Ray a stage costs actor and task
    start-ups more than rows), with shards of a few rows and one actor per API stage
    (imported here, not at the top: Ray workers import this module for its stages, and
    conftest imports the pipeline)."""
    from conftest import TINY

    return {
        **TINY,
        "N_PROMPTS": 3,
        "N_SOURCE_SEEDS": 3,
        "BATCH_SIZE": 4,
        "SHARD_ROWS": 16,
        "SHARD_FLUSH_SECONDS": 0.0,
        "RAY_IO_ACTORS": 1,
        "RAY_DRIVER_ROWS": 0,  # every chain on the cluster, however small
        # the demo's search: the streamed adaptive loop runs on Ray as on the local engine
        "SEARCH": "adaptive",
        "SEARCH_GUIDANCE": "best",
    }


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


def mine(where: Path | str, params: dict) -> Any:
    """The tiny chain up to ``select``, exported, its summary written."""
    from nhr.config import PipelineConfig
    from nhr.pipeline import Pipeline

    pipe = Pipeline(where, PipelineConfig.from_params(params), progress=False)
    try:
        pipe.run_chain("select")
        pipe.export()
        pipe.write_summary()
    finally:
        pipe.close()
    return pipe


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory) -> list[tuple[str, str, str]]:
    """The exported rows of the tiny chain on the local engine, in a local folder."""
    from conftest import exported_rows

    pipe = mine(tmp_path_factory.mktemp("local") / "run", {**tiny_ray(), "ENGINE": "local"})
    rows = exported_rows(pipe.store)
    assert len(rows) >= 5
    return rows


def committed(store: Any, table: str, ended: Any, seconds: float = 150.0) -> bool:
    """Wait until ``table`` has a committed shard; False if ``ended()`` says the
    writer is gone or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and ended() is None:
        if any(n.endswith(".parquet") for n, _ in store.files.listdir(f"tables/{table}/ledger")):
            return True
        time.sleep(0.05)
    return False


def test_nhr_run_starts_one_cluster_for_all_its_notebooks_and_stops_it(tmp_path):
    """`nhr run -p ENGINE ray` with no cluster named starts one local Ray cluster: every
    notebook's kernel is given its address (the prompts stage ran there: its stats name
    it, and one node), and it is stopped when the run ends, here by a failing notebook."""
    import re
    import socket
    import subprocess

    import nbformat
    from conftest import NHR, ROOT

    from nhr.store import RunStore

    seen = tmp_path / "kernel_ray_address.txt"
    anonymous = tmp_path / "accepts_anonymous.txt"
    failing = tmp_path / "02_fails.ipynb"
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernel})
    nb.cells = [
        nbformat.v4.new_code_cell('RUN_DIR = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import pathlib\n"
            "from nhr.engines.ray import accepts_anonymous, run_cluster_address\n"
            f"pathlib.Path({str(seen)!r}).write_text(run_cluster_address())"
        ),
        nbformat.v4.new_code_cell(
            f"pathlib.Path({str(anonymous)!r}).write_text("
            "repr(accepts_anonymous(run_cluster_address())))"
        ),
        nbformat.v4.new_code_cell('raise RuntimeError("stopped here")'),
    ]
    nbformat.write(nb, failing)
    config = tmp_path / "two.yaml"
    config.write_text(
        "name: two\n"
        f"notebooks: [{ROOT / 'notebooks' / '01_prompts.ipynb'}, {failing}]\n"
        "params: {SEED: 0, PROMPTER: synthetic, N_PROMPTS: 3, K_INSTRUCTIONS: 2,\n"
        "  ENGINE: ray, RAY_IO_ACTORS: 1, RAY_LOCAL_CPUS: 2, RAY_DRIVER_ROWS: 0}\n"
    )
    run = tmp_path / "run"
    # Ray's defaults for a local cluster: no cluster named, no authentication mode set
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and "RAY_AUTH" not in k}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [*NHR, "run", str(config), "--run-dir", str(run), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "notebook 02_fails.ipynb failed: RuntimeError: stopped here" in proc.stderr
    address = re.search(r"a local Ray cluster for this run: (\S+)", proc.stderr).group(1)
    cluster = RunStore(run).read_stats("prompts")["engine"]["cluster"]
    assert cluster["address"] == address and cluster["nodes"] == 1
    assert seen.read_text() == address
    assert anonymous.read_text() == "False"  # a client without its token is refused
    host, port = address.rsplit(":", 1)
    with pytest.raises(OSError):  # its head is gone
        socket.create_connection((host, int(port)), timeout=2).close()


def test_on_s3_a_sigkilled_driver_then_a_rerun_losing_a_node_gives_the_local_rows(
    s3, cluster, local_rows, tmp_path
):
    """The run folder is on S3 (moto on 127.0.0.1; the nodes have its environment). A
    driver joins the cluster through RAY_ADDRESS and is SIGKILLed once it has committed
    sources; the rerun (ENGINE ray) loses the worker node while it makes candidates (Ray
    retries that node's work on the head); the export has exactly the local engine's
    rows, the stats sum what every worker did and record the engine, and nothing is
    written to a local folder."""
    import signal
    import subprocess

    from conftest import exported_rows
    from fakes.s3 import url

    from nhr.store import RunStore

    c, workers = cluster
    where = url("ray")
    store = RunStore(where)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": c.address}
    proc = subprocess.Popen(
        [sys.executable, str(script), where, repr(tiny_ray())],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert committed(store, "sources", proc.poll), proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not store.exists("dataset")  # killed before the end

    removed = threading.Event()

    def remove_when_editing() -> None:
        if committed(store, "candidates", lambda: None):
            c.remove_node(workers.pop())  # the last test on the cluster: none comes back
            removed.set()

    killer = threading.Thread(target=remove_when_editing, daemon=True)
    killer.start()
    try:
        pipe = mine(where, {**tiny_ray(), "ENGINE": "ray"})
    finally:
        killer.join(timeout=130)
    assert removed.is_set()
    assert exported_rows(store) == local_rows
    stats = store.read_stats("candidates")
    assert stats["rows_out"] == pipe.table("candidates").num_rows > 0
    assert stats["processed_rows"] + stats["resumed_rows"] == stats["rows_in"]
    engine = stats["engine"]  # how the chain that made them ran
    assert engine["name"] == "ray" and engine["windows"] >= 1
    assert engine["duplicates_dropped"] >= 0 and engine["settings"]["io_actors"] == 1
    assert any(name.endswith(":candidates") for name in engine["links"])
    assert all(p["kind"] in ("cpu", "io", "device") for p in engine["links"].values())
    summary = store.read_json("summary.json")
    assert summary["stages"]["candidates"]["engine"] == "ray"
    assert [p.name for p in tmp_path.iterdir()] == ["driver.py"]


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
