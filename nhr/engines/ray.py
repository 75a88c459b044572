"""The Ray engine: a chain of links as Ray Data ``map_batches`` over actor pools.

Each link becomes one ``map_batches`` operator with the resources its stage declares
(``Stage.work_kind``):

- ``device`` (text-to-image models, editors): an actor pool, ``gpus_per_actor`` GPUs
  each, one model resident per actor (one actor per GPU of the cluster by default);
- ``io`` (API judges, writers): a pool of ``io_actors`` CPU actors; the API's
  concurrency and rate limits (``API_CONCURRENCY``, ``API_RPM``, ``API_TPM``, each per
  backend) are split evenly among them, so the cluster as a whole keeps the configured
  caps without a call to a limiter actor per request;
- ``cpu`` (the synthetic world, the low-level check): Ray tasks, the stage unpickled and
  set up once per worker process.

Stages travel as one pickle of the chain, put in the object store once; each worker
builds its link's stage from it and calls ``setup()`` once, and ``teardown()`` when Ray
ends the actor. Rows flow through the operators as three
columns: ``link`` (whose input the row is; -1 for none), ``item`` (a pickled record) and
``done`` (pickled ``Done``s of the batches finished upstream, carried along on the first
row of each output, so survivors never return to the driver between links while every
link's results still reach it). The driver reads the last operator's output and yields
the ``Done``s; the runner commits them.

Ray Data needs a dataset's input up front, so the engine pulls the runner's batches in
windows of ``window_rows`` inputs of link 0 (one dataset, and one start of the actor
pools, per window): large windows start actors rarely, small ones stop sooner once the
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

import contextlib
import gc
import logging
import os
import pickle
import socket
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
        self.failed: bytes | None = None  # a setup error, sent back with the first block
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


def _quiet(ray: Any) -> Any:
    """``ray``, with Ray Data's per-operator progress bars and plan printing off (the
    engine draws one coarse bar; the runner its per-stage ones)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


QUIET_INIT = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}


def start_local(ray: Any, cpus: int = 0) -> None:
    """Start a local Ray cluster (``cpus`` logical CPUs, 0: the machine's cores) with this
    process as its driver, trying again when a busy machine misses Ray's start-up time."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(LOCAL_STARTS):
        try:
            ray.init(address="local", num_cpus=cpus or None, **QUIET_INIT)
            return
        except Exception as err:  # Ray waits a fixed 30 s for its raylet
            ray.shutdown()
            if attempt == LOCAL_STARTS - 1 or "timed out during startup" not in str(err):
                raise
            log.warning("a local Ray cluster missed its start-up time; starting again")


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
            share = 1.0 / place["actors"] if place["kind"] == IO else 1.0
            ds = ds.map_batches(
                LinkWorker,
                fn_constructor_kwargs={"chain": chain, "k": k, "share": share},
                compute=ray.data.ActorPoolStrategy(size=place["actors"]),
                num_gpus=place.get("num_gpus") or None,
                **common,
            )
        return ds

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
