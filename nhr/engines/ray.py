"""The Ray engine: a chain of links on long-lived Ray actors, fed block by block.

Each link runs on actors (``StageHost``) with the resources its stage declares
(``Stage.work_kind``):

- ``device`` (text-to-image models, editors): the chain's own actors,
  ``gpus_per_actor`` GPUs each, one model resident per actor, loaded when the chain
  starts (one actor per GPU of the cluster by default);
- ``io`` (API judges, writers): ``io_actors`` CPU actors of an io pool of the engine
  (a chain's first io link on pool ``io0``, its second on ``io1``, ...), kept for every
  later chain; each sets the link's stage up when the chain starts, and the API's
  concurrency and rate limits (``API_CONCURRENCY``, ``API_RPM``, ``API_TPM``, each per
  backend) are split evenly among them, so the cluster as a whole keeps the configured
  caps without a call to a limiter actor per request;
- ``cpu`` (the synthetic world, the low-level check): the engine's pool of actors (one
  per ``cpus_per_cpu_task`` CPUs of the cluster, or ``cpu_tasks``), made on the first
  chain and kept for every later chain of the engine; each sets a link's stage up on
  its first block of a chain. They reserve no CPU (their number is the bound) and
  spread over the nodes, so the device and io actors of any chain still place.

A chain with no device link and at most ``driver_rows`` inputs runs on the driver
instead, through the local engine: it ends sooner than actors start.

The driver hands each block (one runner batch of link 0's inputs) to the least busy
actor of link 0, and the block's output, left in the object store, to the least busy
actor of link 1, and so on; only the last link's output comes back to the driver.
A model thus loads once per actor per chain, whatever the number of windows (counted
under the link's ``loads`` in ``describe()``), and a window costs only the hand-offs of
its blocks, not the start of a dataset or of workers.

Stages travel as one pickle of the chain, put in the object store once; each actor
builds its link's stage from it and calls ``setup()`` once, and ``teardown()`` when the
chain ends. Rows flow between links as three
columns: ``link`` (whose input the row is; -1 for none), ``item`` (a pickled record) and
``done`` (pickled ``Done``s of the batches finished upstream, carried along on the first
row of each output, so survivors never return to the driver between links while every
link's results still reach it). The driver reads the last link's output and yields
the ``Done``s; the runner commits them.

The engine pulls the runner's batches in windows of ``window_rows`` inputs of link 0,
each run to its end before the next is pulled: small windows stop sooner once the
runner's budget is spent (the runner stops handing out batches). A pause of the inputs
(an empty batch) ends a window early: what comes after it depends on the window's
results.

Exactly-once: a block that meets a lost actor (its node gone) or a lost object runs
again from link 0 on the actors left (lost actors are not remade; ``lost`` counts
them), so a batch can reach the driver twice: the driver drops a ``Done`` whose inputs
it already yielded for that link (counted in ``describe()["duplicates_dropped"]``, and
logged), and the runner drops ones whose keys are committed. A stage's error comes back
as itself (pickled, with a note naming the stage, the batch and the node) and is raised
on the driver.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from nhr.backends.base import CPU, DEVICE, IO
from nhr.engines.base import Done, Engine, Link
from nhr.engines.batch import BatchRun, sendable
from nhr.errors import ConfigError
from nhr.hashing import KeySet, fingerprints
from nhr.records import Record

log = logging.getLogger(__name__)

INSTALL = "pip install 'ray[data]==2.60.0' (or pip install -e '.[ray]')"
# the columns of every row between operators
SCHEMA = pa.schema(
    [
        ("link", pa.int64()),
        ("item", pa.binary()),
        ("done", pa.list_(pa.binary())),
        ("error", pa.binary()),
    ]
)
NO_LINK = -1
# the address of the local cluster `nhr run` started for its kernels (see local_cluster)
RUN_CLUSTER = "NHR_RAY_RUN_CLUSTER"
# the file where that cluster's address appears once it is up (see run_cluster_address)
RUN_CLUSTER_FILE = "NHR_RAY_RUN_CLUSTER_FILE"
RUN_CLUSTER_WAIT = 900.0  # seconds a kernel waits for that cluster to come up
POOL_NAMESPACE = "nhr"  # of the pools' named actors on such a cluster
LOST_RETRIES = 3  # times a block starts again after meeting a lost actor or object
LOCAL_STARTS = 3  # tries to start a local cluster (a busy machine can miss Ray's timeout)


def dumps(obj: Any) -> bytes:
    """Pickle what crosses to Ray workers: with cloudpickle, so stages, records and
    forwards defined in a script's ``__main__`` travel by value."""
    from ray import cloudpickle

    return cloudpickle.dumps(obj)


def _missing(err: object) -> ConfigError:
    return ConfigError(
        f"ENGINE ray needs Ray Data, which is not installed ({err})",
        f"run {INSTALL}, or set ENGINE local",
    )


def require_ray() -> None:
    """An error naming what to install when Ray is missing; Ray is not imported."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError) as err:
        raise _missing(err) from None
    if not found:
        raise _missing("No module named 'ray'")


# jsonschema imports this package, when it is installed, to check the "iri" formats
# (Jupyter's jsonschema[format-nongpl] installs it), and it compiles some 35 Earley
# parsers at import: 2–3 CPU-s, most of what `import ray` costs (Ray imports jsonschema
# for its runtime_env schemas, which use no IRI format).
IRI_GRAMMAR = "rfc3987_syntax"


@contextlib.contextmanager
def _without_iri_grammar() -> Iterator[None]:
    """While Ray is first imported: jsonschema imported (by Ray) without ``IRI_GRAMMAR``,
    so a jsonschema ``FormatChecker`` of this process checks no "iri" format (as where
    that package is not installed). Nothing changes where jsonschema is imported
    already."""
    if "jsonschema" in sys.modules or IRI_GRAMMAR in sys.modules:
        yield
        return
    sys.modules[IRI_GRAMMAR] = None  # type: ignore[assignment]  # an import of it fails
    try:
        yield
    finally:
        if IRI_GRAMMAR in sys.modules and sys.modules[IRI_GRAMMAR] is None:
            del sys.modules[IRI_GRAMMAR]


def import_ray() -> Any:
    """The ``ray`` module (its first import without the IRI grammar, see
    ``_without_iri_grammar``), or an error naming what to install."""
    try:
        with _without_iri_grammar():
            import ray
    except ImportError as err:
        raise _missing(err) from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """How the Ray engine places a chain (the ``engine`` block's ``RAY_*`` fields).

    ``address``: the cluster to join (``''``: the ``RAY_ADDRESS`` environment variable,
    else a new local cluster; ``auto``: the one ``ray start`` made on this machine).
    ``device_actors``: actors per device stage (0: one per ``gpus_per_actor`` GPUs of
    the cluster, at least one). ``io_actors``: actors per API-bound stage.
    ``cpu_tasks``: concurrent tasks per CPU-bound stage (0: as Ray schedules them).
    ``cpus_per_*``: logical CPUs each actor or task reserves. ``window_rows``: inputs of
    link 0 per window. ``local_cpus``: logical CPUs of a local cluster this engine
    starts (0: the machine's cores). ``driver_rows``: a chain with no device stage
    whose whole input (link 0's) is at most this many rows runs on the driver, as
    ``ENGINE local`` runs it (0: every chain goes to the cluster)."""

    address: str = ""
    device_actors: int = 0
    gpus_per_actor: float = 1.0
    io_actors: int = 2
    cpu_tasks: int = 0
    cpus_per_device_actor: float = 1.0
    cpus_per_io_actor: float = 0.25
    cpus_per_cpu_task: float = 1.0
    window_rows: int = 20_000
    local_cpus: int = 0
    driver_rows: int = 256


def _teardown(stage: Any) -> None:
    """Release what a stage holds (``teardown()``), then the accelerator's cache."""
    stage.teardown()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class LinkWorker:
    """Link ``k`` of a chain on a Ray worker: the stage built from the chain's pickle and
    set up once; each call maps a block of rows (inputs of link ``k``, and ``Done``s
    carried from upstream) to the next link's inputs and the ``Done``s so far."""

    def __init__(self, chain: Any, k: int, share: float = 1.0) -> None:
        self.k = k
        self.loads = 0  # setups done (a model loaded): one per actor per chain
        self.failed: bytes | None = None  # a setup error, sent back with every block
        try:
            ray = import_ray()
            blob = ray.get(chain) if isinstance(chain, ray.ObjectRef) else chain
            links: list[Link] = pickle.loads(blob)
            self.link = links[k]
            self.last = k == len(links) - 1
            self.stage = self.link.stage
            if share < 1.0:
                self.stage.share_limits(share)
            self.stage.setup()
            self.loads += 1
            self.run = BatchRun(self.stage, portable=True, node=True)
        except Exception as err:  # Ray Data would retry a failing constructor forever
            sent = sendable(err)
            name = getattr(getattr(self, "stage", None), "name", f"link {k}")
            sent.add_note(f"in the setup of stage {name!r} on node {socket.gethostname()}")
            self.failed = pickle.dumps(sent)

    def _calls(self, rows: list[Record]) -> Iterator[list[Record]]:
        """The link's calls over ``rows``: its batcher's grouping, else slices."""
        size = max(1, self.link.batch_size)
        if self.link.batcher is not None:
            yield from self.link.batcher(iter(rows), size)
            return
        for i in range(0, len(rows), size):
            yield rows[i : i + size]

    def __call__(self, table: pa.Table) -> pa.Table:
        links = table.column("link").to_pylist()
        items = table.column("item").to_pylist()
        carried = [p for row in table.column("done").to_pylist() if row for p in row]
        errors = [e for e in table.column("error").to_pylist() if e]
        if self.failed is not None:
            errors.insert(0, self.failed)
        mine = [pickle.loads(it) for n, it in zip(links, items, strict=True) if n == self.k]
        done: list[Done] = []
        forward: list[Record] = []
        if mine and not errors:
            for call in self._calls(mine):
                try:
                    out, seconds, usage = self.run(call)
                except Exception as err:  # noted and made sendable by BatchRun
                    errors.append(pickle.dumps(err))
                    break
                done.append(Done(self.k, call, out, seconds, usage))
                if self.link.forward is not None and not self.last:
                    forward.extend(self.link.forward(call, out))
        if done:
            carried.append(dumps(done))
        return _rows(self.k + 1, forward, carried, errors)

    def close(self) -> None:
        """Release the stage (its model) before the actor is ended."""
        stage = getattr(self, "stage", None)
        self.stage = None
        if stage is not None:
            _teardown(stage)

    def __del__(self) -> None:
        stage = getattr(self, "stage", None)
        if stage is not None:
            with contextlib.suppress(Exception):
                _teardown(stage)


def _rows(link: int, items: list[Record], carried: list[bytes], errors: list[bytes]) -> pa.Table:
    """Output rows: one per item (for ``link``), ``Done``s and errors on the first row
    (a row of its own when there is no item)."""
    n = max(1, len(items))
    return pa.table(
        {
            "link": [link] * len(items) or [NO_LINK],
            "item": [dumps(r) for r in items] or [None],
            "done": [carried or None] + [None] * (n - 1),
            "error": [errors[0] if errors else None] + [None] * (n - 1),
        },
        schema=SCHEMA,
    )


class StageHost:
    """A long-lived Ray actor that runs links of chains: for each (chain, link) it is
    given blocks of, a ``LinkWorker`` built from the chain's pickle and set up on first
    use (or at once, ``prepare``), kept until the chain ends (``release``). A model
    thus loads once per actor per chain, whatever the number of windows."""

    def __init__(self) -> None:
        self.workers: dict[tuple[str, int], LinkWorker] = {}

    def _worker(self, chain: list[Any], token: str, k: int, share: float = 1.0) -> LinkWorker:
        worker = self.workers.get((token, k))
        if worker is None:  # chain: [the pickle's ObjectRef], so Ray does not fetch it per call
            worker = self.workers[(token, k)] = LinkWorker(chain[0], k, share)
        return worker

    def prepare(self, chain: list[Any], token: str, k: int, share: float = 1.0) -> None:
        """Build and set up link ``k`` of the chain now (a device or io link's model)."""
        self._worker(chain, token, k, share)

    def call(self, chain: list[Any], token: str, k: int, table: pa.Table) -> pa.Table:
        """Link ``k``'s worker over a block (see ``LinkWorker.__call__``)."""
        return self._worker(chain, token, k)(table)

    def report(self, token: str) -> dict[str, Any]:
        """Its actor id, node, and the setups (model loads) of each link of a chain."""
        actor = import_ray().get_runtime_context().get_actor_id()
        loads = {k: w.loads for (t, k), w in self.workers.items() if t == token}
        return {"actor": actor, "node": socket.gethostname(), "loads": loads}

    def release(self, token: str) -> None:
        """Release the chain's stages (their models)."""
        for key in [key for key in self.workers if key[0] == token]:
            self.workers.pop(key).close()


QUIET_INIT = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}


def _free_port() -> int:
    """A TCP port free on this machine now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def agent_ports(lean: bool = False) -> Iterator[None]:
    """While Ray nodes start in this process (``ray.init`` of a local cluster, or
    ``ray.cluster_utils.Cluster.add_node``): each node's agent ports chosen up front.

    Ray 2.60's raylet waits a fixed 15 s for its Python agents (the dashboard agent, the
    runtime-env agent) to write the ports they bound, and exits when one is late; on a
    busy machine an agent's start (importing Ray) takes longer, and the node never comes
    up. Here each node's agents get free ports, and its raylet is told them (by a flag,
    but for the dashboard agent's HTTP port, whose file is written for it before the
    raylet starts, with the port the agent is told to bind), so the raylet starts at
    once and reaches the agents as they come up. Neither ``ray.init`` nor ``Cluster``
    takes these ports, so Ray's start parameters and node are given them here, for the
    duration of the block.

    ``lean``: a head node also starts without the autoscaler's monitor and the log
    monitor (a local cluster has nothing to autoscale, and its drivers take no worker
    logs, ``log_to_driver`` off): two Python processes fewer, each seconds of CPU to
    start (importing Ray), on the path of the cluster's start."""
    from ray._private import node, parameter
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port

    params, base = parameter.RayParams, node.Node

    class WithAgentPorts(params):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.metrics_agent_port = self.metrics_agent_port or _free_port()
            self.runtime_env_agent_port = self.runtime_env_agent_port or _free_port()
            # its default (52365) is taken by any other cluster on the machine
            self.dashboard_agent_listen_port = _free_port()
            self.metrics_export_port = self.metrics_export_port or _free_port()
            if lean:
                self.no_monitor = True
                self.include_log_monitor = False

    class WithAgentPortFile(base):  # type: ignore[misc,valid-type]
        def start_raylet(self, *args: Any, **kwargs: Any) -> Any:
            # (a Cluster's worker node has it reset to none after its parameters are made)
            port = self._ray_params.dashboard_agent_listen_port or _free_port()
            self._ray_params.dashboard_agent_listen_port = port
            name = DASHBOARD_AGENT_LISTEN_PORT_NAME
            persist_port(self._session_dir, self._node_id, name, port)
            return super().start_raylet(*args, **kwargs)

    parameter.RayParams, node.Node = WithAgentPorts, WithAgentPortFile
    try:
        yield
    finally:
        parameter.RayParams, node.Node = params, base


def start_local(ray: Any, cpus: int = 0) -> None:
    """Start a local Ray cluster (``cpus`` logical CPUs, 0: the machine's cores) with this
    process as its driver (lean, its agents' ports chosen up front: ``agent_ports``),
    trying again when a busy machine misses Ray's start-up time."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(LOCAL_STARTS):
        try:
            with agent_ports(lean=True):
                ray.init(address="local", num_cpus=cpus or None, **QUIET_INIT)
            return
        except Exception as err:  # Ray waits a fixed 30 s for its raylet
            ray.shutdown()
            if attempt == LOCAL_STARTS - 1 or "timed out during startup" not in str(err):
                raise
            log.warning("a local Ray cluster missed its start-up time; starting again")


# Run in a fresh interpreter with token authentication off: a GCS that answers it
# accepts anyone who reaches its port. Exit 0: answered; 3: refused for want of a token.
_ANONYMOUS_PROBE = """
import sys
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=canonicalize_bootstrap_address_or_die(sys.argv[1])).internal_kv_get(
        b"nhr-probe", None, timeout=float(sys.argv[2]))
except AuthenticationError:
    sys.exit(3)
"""
OPEN_CLUSTER_FIX = (
    "restart it with token authentication: the same RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
    "(or RAY_AUTH_TOKEN_PATH, a file holding it; `ray get-auth-token --generate` makes one) "
    "in the environment of `ray start` on every node and of `nhr run` (KubeRay: the "
    "RayCluster's `authOptions: {mode: token}`)"
)


def accepts_anonymous(address: str, timeout: float = 20.0) -> bool | None:
    """Whether the Ray cluster at ``address`` (``host:port`` or ``auto``) answers a client
    that sends no authentication token: True (open), False (it refuses one), None (no
    answer either way: unreachable, a Ray Client ``ray://`` address, a timeout)."""
    if address.startswith("ray://"):
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    env["RAY_AUTH_MODE"] = "disabled"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ANONYMOUS_PROBE, address, str(timeout)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode in (0, 3):
        return proc.returncode == 0
    log.debug("probing the Ray cluster at %s failed: %s", address, proc.stderr[-2000:])
    return None


def warn_if_open(address: str) -> bool:
    """Warn (once per call; ``nhr run`` calls it once) when the cluster at ``address``
    accepts clients without a token, naming the fix; True if it warned."""
    if not accepts_anonymous(address):
        return False
    log.warning(
        "the Ray cluster at %s accepts clients without an authentication token: anyone "
        "who reaches its ports can run code on every node (CVE-2023-48022); %s",
        address,
        OPEN_CLUSTER_FIX,
    )
    return True


# The process that holds the local cluster of an `nhr run`: it starts the cluster, writes
# how to join it (its address, and the authentication mode Ray chose for it) or the error
# that stopped it to the file argv[1], and shuts the cluster down when its standard
# input closes (the run ended, or died).
_CLUSTER_HOST = """
import json, os, sys
from nhr.engines.ray import RUN_CLUSTER, RayEngine, RaySettings, import_ray, start_local

path, settings = sys.argv[1], RaySettings(**json.loads(sys.argv[2]))
try:
    ray = import_ray()
    start_local(ray, settings.local_cpus)
    address = os.environ[RUN_CLUSTER] = ray.get_runtime_context().gcs_address
    joining = {"address": address, "auth_mode": os.environ.get("RAY_AUTH_MODE")}
    RayEngine(settings, progress=False).warm_pools(ray)
except BaseException as err:
    joining = {"error": f"the run's local Ray cluster did not start: {type(err).__name__}: {err}"}
with open(path + ".tmp", "w") as f:
    json.dump(joining, f)
os.replace(path + ".tmp", path)
if "address" in joining:
    print(f"a local Ray cluster for this run: {address}", file=sys.stderr, flush=True)
    sys.stdin.read()
    ray.shutdown()
"""


@contextlib.contextmanager
def local_cluster(settings: RaySettings | None = None) -> Iterator[str]:
    """A local Ray cluster for the processes this one starts (``nhr run``'s notebook
    kernels), started in the background by a helper process (which prints its address
    once up) while the first notebooks run: a kernel waits for it only when a chain of
    its goes to the cluster (``run_cluster_address``), and kernels whose chains run on
    the driver (small ones) or have nothing to do never do. The kernels find it through
    ``NHR_RAY_RUN_CLUSTER_FILE`` (exported here; the value is that file's path), join it
    rather than start their own, and share pools of actors on it, which its end ends
    (``RayEngine._pool``); the helper starts the pools' processes right away
    (``RayEngine.warm_pools``, by ``settings``: ``local_cpus`` CPUs, the pools' sizes).
    It is shut down on the way out (errors included), or when this process dies (the
    helper's input closes)."""
    folder = tempfile.mkdtemp(prefix="nhr-ray-")
    path = os.path.join(folder, "address")
    given = json.dumps(asdict(settings or RaySettings()))
    host = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER_HOST, path, given], stdin=subprocess.PIPE
    )
    saved = os.environ.get(RUN_CLUSTER_FILE)
    os.environ[RUN_CLUSTER_FILE] = path
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(RUN_CLUSTER_FILE, None)
        else:
            os.environ[RUN_CLUSTER_FILE] = saved
        assert host.stdin is not None
        host.stdin.close()
        try:
            host.wait(timeout=120)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()
        shutil.rmtree(folder, ignore_errors=True)


def run_cluster_address(wait: float = RUN_CLUSTER_WAIT) -> str:
    """The address of the local cluster of the ``nhr run`` this process belongs to
    (``local_cluster``), waiting up to ``wait`` seconds for it to come up; '' outside
    such a run. Exported as ``RAY_ADDRESS`` and ``NHR_RAY_RUN_CLUSTER`` here, for Ray and
    the pools, with the cluster's ``RAY_AUTH_MODE`` (token, as Ray makes a local
    cluster, unless the run set it), which Ray reads when it is imported: call this
    first."""
    path = os.environ.get(RUN_CLUSTER_FILE, "")
    if not path:
        return ""
    deadline = time.monotonic() + wait
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the local Ray cluster of this run did not come up in {wait:.0f} s "
                f"(no address in {path}); see `nhr run`'s output"
            )
        time.sleep(0.1)
    with open(path) as f:
        joining = json.load(f)
    if "error" in joining:
        raise RuntimeError(joining["error"])
    if joining["auth_mode"] and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = joining["auth_mode"]  # read when Ray is imported
    address: str = joining["address"]
    os.environ["RAY_ADDRESS"] = os.environ[RUN_CLUSTER] = address
    return address


@dataclass
class _Hosts:
    """The actors running one link of a chain, and the blocks each has in flight."""

    actors: list[Any]
    busy: list[int]
    pool: str  # the engine's pool they belong to (kept for later chains); '': the chain's

    def pick(self) -> int:
        """The actor with the fewest blocks in flight."""
        return min(range(len(self.actors)), key=self.busy.__getitem__)


class RayEngine(Engine):
    """Runs chains on a Ray cluster (joined, or started locally on first use)."""

    name = "ray"

    def __init__(
        self, settings: RaySettings | None = None, progress: bool = True, workers: int = 0
    ) -> None:
        self.settings = settings or RaySettings()
        self.progress = progress
        self.workers = workers  # of a chain run on the driver (the local engine's bound)
        self._started = False
        self._counts: Counter[str] = Counter()
        self._placement: dict[str, dict[str, Any]] = {}
        self._driver: dict[str, Any] = {}  # the local engine's describe() of a driver chain
        # the cpu pool ("cpu") and the io pools ("io0", "io1": a chain's first, second io
        # link), actors kept for every chain of the engine
        self._pools: dict[str, list[Any]] = {}

    # ---- the cluster ----------------------------------------------------------------
    def connect(self) -> Any:
        """The ``ray`` module, connected: the session already open in this process, else
        the cluster of ``address`` (or ``RAY_ADDRESS``), else the local cluster of the
        ``nhr run`` this process belongs to (``run_cluster_address``), else a new local
        cluster."""
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            return ray
        address = self.settings.address or os.environ.get("RAY_ADDRESS", "")
        address = address or run_cluster_address()  # before Ray is imported: it sets auth
        ray = import_ray()
        if address:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=address, **QUIET_INIT)
        else:
            start_local(ray, self.settings.local_cpus)
        self._started = True
        return ray

    def close(self) -> None:
        """End the pools' actors (those of this engine: the named ones of `nhr run`'s
        cluster end with it); shut Ray down if this engine started it (a joined session
        stays open)."""
        if self._pools:
            ray = import_ray()
            for actor in [a for pool in self._pools.values() for a in pool]:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            self._pools = {}
        if self._started:
            ray = import_ray()
            ray.shutdown()
            self._started = False

    def describe(self) -> dict[str, Any]:
        """Engine, settings, the cluster (address, live nodes, resources), and what the
        last stream did: windows, batches, duplicates dropped, each link's placement
        (kind, actors, GPUs and CPUs each, model loads by actor, actors lost), or, for a
        chain run on the driver, ``driver``: the local engine's description."""
        info: dict[str, Any] = {"name": self.name, "settings": asdict(self.settings)}
        info.update(dict(self._counts))
        info["windows"] = self._counts["windows"]
        info["duplicates_dropped"] = self._counts["duplicates_dropped"]
        if self._placement:
            info["links"] = self._placement
        if self._driver:
            info["driver"] = self._driver
        ray = sys.modules.get("ray")  # never imported here: a chain with no work needs no Ray
        with contextlib.suppress(Exception):
            if ray is not None and ray.is_initialized():
                info["cluster"] = {
                    "address": ray.get_runtime_context().gcs_address,
                    "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                    "resources": {
                        k: v
                        for k, v in ray.cluster_resources().items()
                        if k in ("CPU", "GPU", "memory")
                    },
                }
        return info

    # ---- placement ------------------------------------------------------------------
    def placement(self, ray: Any, stage: Any) -> dict[str, Any]:
        """The actors of a stage by what it spends."""
        s = self.settings
        kind = stage.work_kind()
        if kind == DEVICE:
            gpus = float(ray.cluster_resources().get("GPU", 0.0))
            per = s.gpus_per_actor if gpus > 0 else 0.0
            if gpus <= 0:
                log.warning(
                    "stage %s declares device work but the Ray cluster has no GPUs; "
                    "running its actors without one",
                    stage.name,
                )
            actors = s.device_actors or max(1, int(gpus // per) if per else 1)
            return {
                "kind": kind,
                "actors": actors,
                "num_gpus": per,
                "num_cpus": s.cpus_per_device_actor,
            }
        if kind == IO:
            return {"kind": kind, "actors": s.io_actors, "num_cpus": s.cpus_per_io_actor}
        assert kind == CPU
        return {"kind": kind, "actors": self._cpu_pool_size(ray), "num_cpus": s.cpus_per_cpu_task}

    def _cpu_pool_size(self, ray: Any) -> int:
        """Actors of the cpu pool: ``cpu_tasks``, else one per ``cpus_per_cpu_task`` CPUs
        of the cluster."""
        s = self.settings
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per = s.cpus_per_cpu_task
        return s.cpu_tasks or max(1, int(cpus // per) if per > 0 else 1)

    def warm_pools(self, ray: Any) -> None:
        """Start the actors of the cpu pool and of the first io pool now (their
        processes start in the background), so a chain finds them up."""
        self._pool(ray, "cpu", self._cpu_pool_size(ray), 0.0)
        self._pool(ray, "io0", self.settings.io_actors, self.settings.cpus_per_io_actor)

    def _pool(self, ray: Any, name: str, size: int, cpus: float) -> list[Any]:
        """``size`` actors of the engine's pool ``name`` (``cpu``: every cpu link's; ``io0``,
        ``io1``, ...: the first, second, ... io link of every chain), spread over the
        nodes, each reserving ``cpus`` CPUs. A chain's stages come and go on them; their
        processes (seconds of imports each to start) stay.

        On the local cluster ``nhr run`` started for its kernels, they are named,
        detached actors that every kernel's engine shares (made by the first, found by
        the others), ended with the cluster. Elsewhere they are this engine's, made
        on first use, kept for every later chain, ended by ``close()``."""
        host = ray.remote(StageHost)
        if os.environ.get(RUN_CLUSTER) == ray.get_runtime_context().gcs_address:
            options = {
                "num_cpus": cpus,
                "scheduling_strategy": "SPREAD",
                "namespace": POOL_NAMESPACE,
                "lifetime": "detached",
                "get_if_exists": True,
            }
            return [host.options(name=f"{name}-{i}", **options).remote() for i in range(size)]
        pool = self._pools.setdefault(name, [])
        while len(pool) < size:
            pool.append(host.options(num_cpus=cpus, scheduling_strategy="SPREAD").remote())
        return pool[:size]

    def _start_hosts(
        self, ray: Any, chain: list[Any], token: str, links: Sequence[Link]
    ) -> list[_Hosts]:
        """Each link's actors: the cpu pool's for a cpu link (reserving no CPU: their
        number is the bound, so device and io actors always find theirs; its stage set
        up on first use in each), an io pool's for an io link (its stage set up now,
        with its share of the API limits), else the chain's own, each loading its
        model now (one lost with its node is not remade; its blocks go to the others)."""
        out = []
        io_links = 0
        for k, link in enumerate(links):
            place = self.placement(ray, link.stage)
            self._placement[f"{k}:{link.stage.name}"] = place
            if place["kind"] == CPU:
                actors = self._pool(ray, "cpu", place["actors"], 0.0)
                out.append(_Hosts(actors, [0] * len(actors), "cpu"))
                continue
            if place["kind"] == IO:
                pool = place["pool"] = f"io{io_links}"
                io_links += 1
                actors = self._pool(ray, pool, place["actors"], place["num_cpus"])
            else:
                host = ray.remote(StageHost).options(
                    num_cpus=place["num_cpus"], num_gpus=place.get("num_gpus") or None
                )
                actors = [host.remote() for _ in range(place["actors"])]
                pool = ""
            share = 1.0 / len(actors) if place["kind"] == IO else 1.0
            for actor in actors:
                actor.prepare.remote(chain, token, k, share)
            out.append(_Hosts(actors, [0] * len(actors), pool))
        return out

    def _stop_hosts(self, ray: Any, token: str, links: Sequence[Link], hosts: list[_Hosts]) -> None:
        """Record each actor's model loads in its link's placement, release the chain's
        stages, end the chain's own actors (the pools' stay)."""
        for k, linked in enumerate(hosts):
            name = f"{k}:{links[k].stage.name}"
            loads: dict[str, int] = {}
            for actor in linked.actors:
                try:
                    report = ray.get(actor.report.remote(token), timeout=60)
                except Exception:  # lost with its node
                    continue
                if k in report["loads"]:
                    loads[report["actor"]] = report["loads"][k]
            self._placement[name]["loads"] = loads
        every = {id(a): a for linked in hosts for a in linked.actors}
        with contextlib.suppress(Exception):
            ray.get([a.release.remote(token) for a in every.values()], timeout=60)
        for linked in hosts:
            if not linked.pool:
                for actor in linked.actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)

    def _drop_lost(self, ray: Any, links: Sequence[Link], hosts: list[_Hosts]) -> None:
        """Drop the actors that no longer answer (lost with their node), counting them
        under their link's ``lost``; an error if a link has none left."""
        for k, linked in enumerate(hosts):
            alive = []
            for i, actor in enumerate(linked.actors):
                try:
                    ray.get(actor.__ray_ready__.remote(), timeout=60)
                    alive.append(i)
                except Exception:
                    name = f"{k}:{links[k].stage.name}"
                    self._placement[name]["lost"] = self._placement[name].get("lost", 0) + 1
                    pool = self._pools.get(linked.pool, [])
                    if actor in pool:
                        pool.remove(actor)
            if not alive:
                raise RuntimeError(
                    f"every actor of stage {links[k].stage.name} ({len(linked.actors)}) was lost"
                )
            if len(alive) < len(linked.actors):
                log.warning(
                    "%d actor(s) of stage %s were lost; their blocks go to the others",
                    len(linked.actors) - len(alive),
                    links[k].stage.name,
                )
                linked.actors = [linked.actors[i] for i in alive]
                linked.busy = [linked.busy[i] for i in alive]

    # ---- streaming ------------------------------------------------------------------
    def stream(self, links: Sequence[Link], batches: Iterable[list[Record]]) -> Iterator[Done]:
        """Run ``batches`` through ``links`` window by window on the cluster; yield each
        finished batch of every link once. A chain with nothing to do (every input
        committed in an earlier run) never connects to Ray, nor does a small one, run on
        the driver (``_on_driver``)."""
        if not links:
            return
        self._counts = Counter()  # describe() tells of this stream (one chain's stats)
        self._placement = {}
        self._driver = {}
        pulled = iter(batches)
        window, ended = self._window(pulled)
        if not window:
            return
        if ended and self._on_driver(links, window):
            yield from self._run_on_driver(links, window)
            return
        ray = self.connect()  # before Ray's pickler is imported (see run_cluster_address)
        try:
            blob = dumps(list(links))
        except Exception as err:
            names = ", ".join(link.stage.name for link in links)
            raise TypeError(
                f"the chain ({names}) cannot be pickled for Ray workers "
                f"({type(err).__name__}: {err}); make its stages, forwards and batchers "
                "picklable (top-level functions and classes)"
            ) from err
        chain = [ray.put(blob)]
        token = uuid.uuid4().hex
        # every input key yielded, per link, as fingerprints (8 bytes a key, not a string)
        seen = [KeySet() for _ in links]
        bar = tqdm(
            desc=f"ray: {' → '.join(link.stage.name for link in links)}",
            unit="row",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        hosts = self._start_hosts(ray, chain, token, links)
        try:
            while window:
                self._counts["windows"] += 1
                bar.total = (bar.total or 0) + sum(len(batch) for batch in window)
                yield from self._run_window(ray, chain, token, links, hosts, window, seen, bar)
                window, _ = self._window(pulled)
        finally:
            bar.close()
            self._stop_hosts(ray, token, links, hosts)

    def _run_window(
        self,
        ray: Any,
        chain: list[Any],
        token: str,
        links: Sequence[Link],
        hosts: list[_Hosts],
        window: list[list[Record]],
        seen: list[KeySet],
        bar: tqdm,
    ) -> Iterator[Done]:
        """Each block of the window through every link: handed to the least busy actor
        of link 0, its output (left in the object store) to one of link 1, and so on; the
        last link's output comes back. A block that meets a lost actor or object starts
        again from link 0 on the actors left (what it finished already is dropped as
        yielded)."""
        inflight: dict[Any, tuple[int, int, int]] = {}  # ref -> (block, link, actor)
        tries = [0] * len(window)
        blocks = [_rows(0, batch, [], []) for batch in window]

        def submit(b: int, k: int, block: Any) -> None:
            linked = hosts[k]
            i = linked.pick()
            ref = linked.actors[i].call.remote(chain, token, k, block)
            linked.busy[i] += 1
            inflight[ref] = (b, k, i)

        for b, block in enumerate(blocks):
            submit(b, 0, block)
        lost = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                b, k, i = inflight.pop(ref)
                if i < len(hosts[k].busy):
                    hosts[k].busy[i] = max(0, hosts[k].busy[i] - 1)
                if k + 1 < len(links):
                    submit(b, k + 1, ref)  # the actor fetches it from the object store
                    continue
                try:
                    out = ray.get(ref)
                except lost as err:
                    tries[b] += 1
                    if tries[b] > LOST_RETRIES:
                        raise
                    log.warning("a block met a lost actor or object (%s); running it again", err)
                    self._drop_lost(ray, links, hosts)
                    for linked in hosts:
                        linked.busy = [0] * len(linked.actors)
                    submit(b, 0, blocks[b])
                    continue
                yield from self._finished(out, seen, bar)

    def _window(self, pulled: Iterator[list[Record]]) -> tuple[list[list[Record]], bool]:
        """The next window of link 0's inputs (the runner's batches, each a block), and
        whether the inputs ended with it (neither paused nor cut at ``window_rows``)."""
        window: list[list[Record]] = []
        rows = 0
        for batch in pulled:
            if not batch:  # the inputs paused: they resume once this window has run
                if not window:
                    raise RuntimeError(
                        "link 0's inputs paused with no batch in flight: nothing could "
                        "ever resume them"
                    )
                return window, False
            window.append(batch)
            rows += len(batch)
            if rows >= self.settings.window_rows:
                return window, False
        return window, True

    def _on_driver(self, links: Sequence[Link], window: list[list[Record]]) -> bool:
        """Whether a chain whose whole input is ``window`` runs on the driver: no stage
        of it loads a model (a device stage always runs on its actors), and its input is
        at most ``driver_rows`` rows, so the chain ends sooner than its actors would
        start (an io link's actors, a new kernel's connection: seconds each)."""
        rows = sum(len(batch) for batch in window)
        if rows > self.settings.driver_rows:
            return False
        return all(link.stage.work_kind() != DEVICE for link in links)

    def _run_on_driver(self, links: Sequence[Link], window: list[list[Record]]) -> Iterator[Done]:
        """The chain through the local engine in this process (worker processes for cpu
        links, threads for io ones, as ``ENGINE local`` with ``WORKERS`` runs it)."""
        from nhr.engines.local import LocalEngine

        local = LocalEngine(self.workers)
        self._driver = local.describe()
        for done in local.stream(links, iter(window)):
            self._counts["batches"] += 1
            yield done

    def _finished(self, block: pa.Table, seen: list[KeySet], bar: tqdm) -> Iterator[Done]:
        """The ``Done``s of an output block, each once; a stage's error is raised."""
        for err in block.column("error").to_pylist():
            if err:
                raise pickle.loads(err)
        for payloads in block.column("done").to_pylist():
            for payload in payloads or ():
                for done in pickle.loads(payload):
                    ids = [r.id for r in done.inputs]
                    fps = fingerprints(pa.array(ids, pa.string()))
                    known = seen[done.link].contains(fps)
                    fresh = int((~known).sum())
                    if not fresh:
                        self._counts["duplicates_dropped"] += 1
                        log.warning(
                            "dropped a recomputed batch of link %d (%d inputs from %r): "
                            "already yielded",
                            done.link,
                            len(ids),
                            ids[0] if ids else "-",
                        )
                        continue
                    if fresh != len(ids):
                        raise RuntimeError(
                            f"a recomputed batch of link {done.link} overlaps an earlier one "
                            f"in part ({len(ids) - fresh} of {len(ids)} inputs, from "
                            f"{ids[0]!r}); its stage's batcher must group a block's inputs "
                            "the same way every time"
                        )
                    seen[done.link].add(fps)
                    self._counts["batches"] += 1
                    if done.link == 0:
                        bar.update(len(ids))
                    yield done
