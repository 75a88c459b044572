"""The Ray engine: a chain of links as Ray Data ``map_batches`` over actor pools.

Each link becomes one ``map_batches`` operator with the resources its stage declares
(``Stage.work_kind``):

- ``device`` (text-to-image models, editors): long-lived host actors, ``gpus_per_actor``
  GPUs each, one model resident per actor (one actor per GPU of the cluster by default);
- ``io`` (API judges, writers): ``io_actors`` long-lived CPU host actors; the API's
  concurrency and rate limits (``API_CONCURRENCY``, ``API_RPM``, ``API_TPM``, each per
  backend) are split evenly among them, so the cluster as a whole keeps the configured
  caps without a call to a limiter actor per request;
- ``cpu`` (the synthetic world, the low-level check): Ray tasks, the stage unpickled and
  set up once per worker process.

The host actors of a link are made once per chain (``stream`` call) and live across its
windows, so a model loads once per actor per chain (counted under the link's ``loads``
in ``describe()``); the link's ``map_batches`` operator is a pool of light tasks that
hand each block to a free host through the link's ``HostDispatch`` actor. A host lost
with its node is dropped (its blocks go to the others; ``lost`` counts it).

Stages travel as one pickle of the chain, put in the object store once; each worker
builds its link's stage from it and calls ``setup()`` once, and ``teardown()`` when the
chain ends. Rows flow through the operators as three
columns: ``link`` (whose input the row is; -1 for none), ``item`` (a pickled record) and
``done`` (pickled ``Done``s of the batches finished upstream, carried along on the first
row of each output, so survivors never return to the driver between links while every
link's results still reach it). The driver reads the last operator's output and yields
the ``Done``s; the runner commits them.

Ray Data needs a dataset's input up front, so the engine pulls the runner's batches in
windows of ``window_rows`` inputs of link 0 (one dataset per window; the host actors
stay): small windows stop sooner once the
runner's budget is spent (the runner stops handing out batches; a window already pulled
runs to its end). A pause of the inputs (an empty batch) ends a window early: what
comes after it depends on the window's results.

Exactly-once: Ray retries tasks and restarts actors lost with a node, and recomputes
lost blocks from their lineage; a recomputed batch can reach the driver twice, so the
driver drops a ``Done`` whose inputs it already yielded for that link (counted in
``describe()["duplicates_dropped"]``, and logged), and the runner drops ones whose
keys are committed. A stage's error comes back as itself (pickled, with a note naming
the stage, the batch and the node) and is raised on the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import socket
import subprocess
import sys
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
HOST_CALL_CPUS = 0.01  # a task handing a block to a host actor only waits on it
LOCAL_STARTS = 3  # tries to start a local cluster (a busy machine can miss Ray's timeout)


def dumps(obj: Any) -> bytes:
    """Pickle what crosses to Ray workers: with cloudpickle, so stages, records and
    forwards defined in a script's ``__main__`` travel by value."""
    from ray import cloudpickle

    return cloudpickle.dumps(obj)


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an error naming what to install."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ConfigError(
            f"ENGINE ray needs Ray Data, which is not installed ({err})",
            f"run {INSTALL}, or set ENGINE local",
        ) from None
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
    link 0 per dataset. ``local_cpus``: logical CPUs of a local cluster this engine
    starts (0: the machine's cores)."""

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

    def call(self, table: pa.Table) -> pa.Table:
        """``self(table)``, as an actor method (a host of the link, see ``run_on_host``)."""
        return self(table)

    def report(self) -> dict[str, Any]:
        """As a host actor: its id, node, and its loads."""
        actor = import_ray().get_runtime_context().get_actor_id()
        return {"actor": actor, "node": socket.gethostname(), "loads": self.loads}

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


# in a task's worker process: the link workers it holds, by chain token and link
_TASK_WORKERS: dict[tuple[str, int], LinkWorker] = {}


def run_cpu_link(table: pa.Table, chain: Any, token: str, k: int) -> pa.Table:
    """A Ray task's body for a cpu link: the worker process's ``LinkWorker`` of link
    ``k`` (made and set up on first use, reused by later tasks of the chain)."""
    key = (token, k)
    worker = _TASK_WORKERS.get(key)
    if worker is None:
        for old in [o for o in _TASK_WORKERS if o[0] != token]:
            _TASK_WORKERS.pop(old)
        worker = _TASK_WORKERS[key] = LinkWorker(chain, k)
    return worker(table)


class HostDispatch:
    """Hands the blocks of an actor link to its long-lived hosts (an async Ray actor on
    the driver's node): each block waits for a free host, runs there, and frees it,
    whatever becomes of the task that sent it. A host lost with its node is dropped and
    the block goes to another; with every host lost, the block fails."""

    def __init__(self, hosts: list[Any]) -> None:
        self.hosts = hosts
        self.alive = len(hosts)
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(hosts)):
            self.free.put_nowait(i)

    async def call(self, table: pa.Table) -> pa.Table:
        ray = import_ray()
        while True:
            i = await self.free.get()
            if i < 0:  # every host is lost: wake the next waiter too
                self.free.put_nowait(i)
                raise RuntimeError(f"every actor of this link ({len(self.hosts)}) was lost")
            try:
                out = await self.hosts[i].call.remote(table)
            except ray.exceptions.RayActorError:
                log.warning("an actor of a link was lost; its blocks go to the others")
                self.alive -= 1
                if self.alive == 0:
                    self.free.put_nowait(-1)
                continue
            self.free.put_nowait(i)
            return out


def run_on_host(table: pa.Table, dispatch: Any) -> pa.Table:
    """A Ray task's body for a device or io link: the block run by a free host of the
    link (a long-lived ``LinkWorker`` actor holding the model, made once per chain)."""
    return import_ray().get(dispatch.call.remote(table))


def _quiet(ray: Any) -> Any:
    """``ray``, with Ray Data's per-operator progress bars and plan printing off (the
    engine draws one coarse bar; the runner its per-stage ones)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


QUIET_INIT = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}


def _free_port() -> int:
    """A TCP port free on this machine now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _agent_ports(ray: Any) -> Iterator[None]:
    """While a local cluster starts: its node's agent ports chosen here, not by the agents.

    Ray 2.60's raylet waits a fixed 15 s for its Python agents (the dashboard agent, the
    runtime-env agent) to write the ports they bound, and exits when one is late; on a
    busy machine an agent's start (importing Ray) takes longer, and the cluster never
    comes up. Here the agents are given free ports, the raylet is told them (a flag for
    each, but the dashboard agent's HTTP port, whose file is written for it before the
    raylet starts, with the port the agent is told to bind), so it starts at once and
    reaches the agents as they come up. ``ray.init`` takes none of these ports, so its
    start parameters and node are given them here, for this call only."""
    from ray._private import node, parameter
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port

    params, base = parameter.RayParams, node.Node
    ports = [_free_port() for _ in range(4)]

    class WithAgentPorts(params):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.metrics_agent_port = self.metrics_agent_port or ports[0]
            self.runtime_env_agent_port = self.runtime_env_agent_port or ports[1]
            # its default (52365) is taken by any other cluster on the machine
            self.dashboard_agent_listen_port = ports[2]
            self.metrics_export_port = self.metrics_export_port or ports[3]

    class WithAgentPortFile(base):  # type: ignore[misc,valid-type]
        def start_raylet(self, *args: Any, **kwargs: Any) -> Any:
            listen = self._ray_params.dashboard_agent_listen_port
            persist_port(self._session_dir, self._node_id, DASHBOARD_AGENT_LISTEN_PORT_NAME, listen)
            return super().start_raylet(*args, **kwargs)

    parameter.RayParams, node.Node = WithAgentPorts, WithAgentPortFile
    try:
        yield
    finally:
        parameter.RayParams, node.Node = params, base


def start_local(ray: Any, cpus: int = 0) -> None:
    """Start a local Ray cluster (``cpus`` logical CPUs, 0: the machine's cores) with this
    process as its driver (its agents' ports chosen up front, see ``_agent_ports``),
    trying again when a busy machine misses Ray's start-up time."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(LOCAL_STARTS):
        try:
            with _agent_ports(ray):
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


@contextlib.contextmanager
def local_cluster(cpus: int = 0) -> Iterator[str]:
    """A local Ray cluster for the processes this one starts (``nhr run``'s notebook
    kernels): started here, its address exported as ``RAY_ADDRESS`` so every kernel
    joins it rather than starting a cluster of its own, shut down on the way out
    (errors included; Ray's processes also end with this one if it is killed)."""
    ray = import_ray()
    if ray.is_initialized():
        raise RuntimeError("this process is connected to a Ray cluster already")
    start_local(ray, cpus)
    saved = os.environ.get("RAY_ADDRESS")
    try:
        address = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = address
        yield address
    finally:
        if saved is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved
        ray.shutdown()


class RayEngine(Engine):
    """Runs chains on a Ray cluster (joined, or started locally on first use)."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None, progress: bool = True) -> None:
        self.settings = settings or RaySettings()
        self.progress = progress
        self._started = False
        self._counts: Counter[str] = Counter()
        self._placement: dict[str, dict[str, Any]] = {}
        self._hosts: dict[int, tuple[list[Any], Any]] = {}  # of the stream running

    # ---- the cluster ----------------------------------------------------------------
    def connect(self) -> Any:
        """The ``ray`` module, connected: the session already open in this process, else
        the cluster of ``address`` (or ``RAY_ADDRESS``), else a new local cluster."""
        ray = import_ray()
        if ray.is_initialized():
            return _quiet(ray)
        address = self.settings.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=address, **QUIET_INIT)
        else:
            start_local(ray, self.settings.local_cpus)
        self._started = True
        return _quiet(ray)

    def close(self) -> None:
        """Shut Ray down if this engine started it (a joined session stays open)."""
        if self._started:
            ray = import_ray()
            ray.shutdown()
            self._started = False

    def describe(self) -> dict[str, Any]:
        """Engine, settings, the cluster (address, live nodes, resources), and what the
        last stream did: windows, batches, duplicates dropped, each link's placement
        (kind, actors or tasks, GPUs and CPUs each)."""
        info: dict[str, Any] = {"name": self.name, "settings": asdict(self.settings)}
        info.update(dict(self._counts))
        info["windows"] = self._counts["windows"]
        info["duplicates_dropped"] = self._counts["duplicates_dropped"]
        if self._placement:
            info["links"] = self._placement
        with contextlib.suppress(Exception):
            ray = import_ray()
            if ray.is_initialized():
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
        """The ``map_batches`` resources of a stage by what it spends."""
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
        return {"kind": kind, "tasks": s.cpu_tasks or None, "num_cpus": s.cpus_per_cpu_task}

    def _dataset(
        self, ray: Any, chain: Any, token: str, links: Sequence[Link], window: list[pa.Table]
    ) -> Any:
        """The window's dataset with every link as a ``map_batches`` operator.

        ``from_blocks`` reads the blocks' metadata here; ``from_arrow`` would run a
        remote task per block for it, seconds of worker start-up per window."""
        ds = ray.data.from_blocks(window)
        for k, link in enumerate(links):
            place = self.placement(ray, link.stage)
            self._placement[f"{k}:{link.stage.name}"] = place
            common = {
                "batch_size": max(1, link.batch_size),
                "batch_format": "pyarrow",
                "num_cpus": place["num_cpus"],
            }
            if place["kind"] == CPU:
                ds = ds.map_batches(
                    run_cpu_link,
                    fn_kwargs={"chain": chain, "token": token, "k": k},
                    compute=ray.data.TaskPoolStrategy(size=place["tasks"]),
                    **common,
                )
                continue
            if k not in self._hosts:
                self._hosts[k] = self._start_hosts(ray, chain, k, place)
            hosts, dispatch = self._hosts[k]
            ds = ds.map_batches(
                run_on_host,
                fn_kwargs={"dispatch": dispatch},
                compute=ray.data.TaskPoolStrategy(size=len(hosts)),
                **{**common, "num_cpus": HOST_CALL_CPUS},
            )
        return ds

    def _start_hosts(
        self, ray: Any, chain: Any, k: int, place: dict[str, Any]
    ) -> tuple[list[Any], Any]:
        """The long-lived actors of an actor link (each builds the stage and loads its
        model once per chain; one lost with its node is not restarted, its blocks go to
        the others) and the dispatcher that hands them the link's blocks."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        share = 1.0 / place["actors"] if place["kind"] == IO else 1.0
        host = ray.remote(LinkWorker).options(
            num_cpus=place["num_cpus"], num_gpus=place.get("num_gpus") or None
        )
        hosts = [host.remote(chain, k, share) for _ in range(place["actors"])]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        dispatch = (
            ray.remote(HostDispatch).options(num_cpus=0, scheduling_strategy=here).remote(hosts)
        )
        return hosts, dispatch

    def _stop_hosts(self, ray: Any, links: Sequence[Link]) -> None:
        """Record each host's model loads in its link's placement, release the stages,
        end the actors."""
        for k, (hosts, dispatch) in self._hosts.items():
            name = f"{k}:{links[k].stage.name}"
            loads: dict[str, int] = {}
            for h in hosts:
                try:
                    report = ray.get(h.report.remote(), timeout=60)
                except Exception:  # lost with its node
                    self._placement[name]["lost"] = self._placement[name].get("lost", 0) + 1
                    continue
                loads[report["actor"]] = report["loads"]
            self._placement[name]["loads"] = loads
            with contextlib.suppress(Exception):
                ray.get([h.close.remote() for h in hosts], timeout=60)
            for actor in [*hosts, dispatch]:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self._hosts = {}

    # ---- streaming ------------------------------------------------------------------
    def stream(self, links: Sequence[Link], batches: Iterable[list[Record]]) -> Iterator[Done]:
        """Run ``batches`` through ``links`` window by window on the cluster; yield each
        finished batch of every link once. A chain with nothing to do (every input
        committed in an earlier run) never connects to Ray."""
        if not links:
            return
        self._counts = Counter()  # describe() tells of this stream (one chain's stats)
        self._placement = {}
        try:
            blob = dumps(list(links))
        except Exception as err:
            names = ", ".join(link.stage.name for link in links)
            raise TypeError(
                f"the chain ({names}) cannot be pickled for Ray workers "
                f"({type(err).__name__}: {err}); make its stages, forwards and batchers "
                "picklable (top-level functions and classes)"
            ) from err
        pulled = iter(batches)
        window = self._window(pulled)
        if not window:
            return
        ray = self.connect()
        chain = ray.put(blob)
        token = uuid.uuid4().hex
        seen: list[set[str]] = [set() for _ in links]
        bar = tqdm(
            desc=f"ray: {' → '.join(link.stage.name for link in links)}",
            unit="row",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            while window:
                self._counts["windows"] += 1
                bar.total = (bar.total or 0) + sum(t.num_rows for t in window)
                ds = self._dataset(ray, chain, token, links, window)
                for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    yield from self._finished(block, seen, bar)
                window = self._window(pulled)
        finally:
            bar.close()
            self._stop_hosts(ray, links)

    def _window(self, pulled: Iterator[list[Record]]) -> list[pa.Table]:
        """The next window of link 0's inputs, one block per runner batch."""
        window: list[pa.Table] = []
        rows = 0
        for batch in pulled:
            if not batch:  # the inputs paused: they resume once this window has run
                if not window:
                    raise RuntimeError(
                        "link 0's inputs paused with no batch in flight: nothing could "
                        "ever resume them"
                    )
                break
            window.append(_rows(0, batch, [], []))
            rows += len(batch)
            if rows >= self.settings.window_rows:
                break
        return window

    def _finished(self, block: pa.Table, seen: list[set[str]], bar: tqdm) -> Iterator[Done]:
        """The ``Done``s of an output block, each once; a stage's error is raised."""
        for err in block.column("error").to_pylist():
            if err:
                raise pickle.loads(err)
        for payloads in block.column("done").to_pylist():
            for payload in payloads or ():
                for done in pickle.loads(payload):
                    ids = [r.id for r in done.inputs]
                    known = seen[done.link]
                    fresh = [i for i in ids if i not in known]
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
                    if len(fresh) != len(ids):
                        raise RuntimeError(
                            f"a recomputed batch of link {done.link} overlaps an earlier one "
                            f"in part ({len(ids) - len(fresh)} of {len(ids)} inputs, from "
                            f"{ids[0]!r}); its stage's batcher must group a block's inputs "
                            "the same way every time"
                        )
                    known.update(ids)
                    self._counts["batches"] += 1
                    if done.link == 0:
                        bar.update(len(ids))
                    yield done
