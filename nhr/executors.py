"""Where the local engine runs a stage's batches: in threads, or in worker processes.

A stage, or a backend it holds, declares what its batches spend in the class attribute
``work`` (``Stage.work_kind`` reads them):

- ``"cpu"``: pure computation (the synthetic world, the low-level check). Batches run
  in worker processes, up to one per core, so one interpreter's lock does not leave
  the other cores idle.
- ``"io"``: waiting on remote calls (the default). Batches run in threads; the API
  client bounds the calls in flight across them.
- ``"device"``: a model resident on an accelerator. One batch at a time, in this
  process, where the model lives.

Every executor has one interface: ``submit(batch, tag) -> Future[BatchDone]`` and
``close(abort)``; ``tag`` is the caller's handle of the batch, returned untouched.
``setup()`` and worker start-up wait for the first ``submit``, so a fully resumed stage
loads nothing. Executors only compute: the runner alone writes output shards, in
this process, so the exactly-once ledger does not depend on where a batch ran.

Worker processes come from a forkserver (a plain fork of a process with live threads,
such as a Jupyter kernel, can deadlock), hold the stage once each (its pickle is sent
with each batch and unpickled, then ``setup()``, once per worker), serve every cpu link
of one chain, and end with it (an idle kernel holds no workers). Each worker holds the
read end of a pipe from its owner: when the owner dies, even by SIGKILL, the pipe closes
and the worker exits at once, so a killed run leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import uuid
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from nhr.backends.base import CPU, DEVICE, IO, WORK_KINDS, declared_work
from nhr.engines.batch import BatchRun, StageError, sendable, where
from nhr.records import Record
from nhr.stages.base import Stage

__all__ = ["CPU", "DEVICE", "IO", "WORK_KINDS", "StageError"]


def cpu_count() -> int:
    """The cores this process may use (its affinity mask, not the machine's total)."""
    count = getattr(os, "process_cpu_count", None)
    if callable(count):
        return max(1, int(count() or 1))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """``workers`` itself, or the core count when it is 0."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per core), got {workers}")
    return workers or cpu_count()


def work_of(stage: Stage) -> str:
    """What a stage's batches spend (``Stage.work_kind``)."""
    return stage.work_kind()


@dataclass(frozen=True)
class BatchDone:
    """One processed batch: its input rows, output rows, the seconds the stage spent on
    it, the API usage it added (calls, tokens, cost; empty for local backends), and the
    caller's ``tag`` given to ``submit`` (never sent to a worker)."""

    batch: list[Record]
    outputs: list[Record]
    seconds: float
    usage: dict[str, float]
    tag: Any = None


class BatchExecutor(ABC):
    """Runs one stage's batches; ``slots`` is how many may be in flight at once."""

    def __init__(self, stage: Stage, slots: int) -> None:
        self.stage = stage
        self.slots = slots

    @abstractmethod
    def submit(self, batch: list[Record], tag: Any = None) -> Future[BatchDone]:
        """Start processing ``batch``; the future raises the stage's own error, noted
        with the stage's name (``tag`` comes back in the result)."""

    @abstractmethod
    def close(self, abort: bool = False) -> None:
        """Release the executor; ``abort`` also stops batches still running."""

    def __enter__(self) -> BatchExecutor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(abort=err is not None)


class ThreadExecutor(BatchExecutor):
    """Batches in up to ``threads`` threads of this process (``setup()`` once, here,
    before the first batch); with one thread and ``inline``, in the caller's thread, no
    handoff (a chain runs it in a thread of its own instead, so that the other links'
    batches are scheduled while it works).

    With several batches in flight, the usage each batch reports is the stage's usage
    since the previous batch finished: the split between batches is approximate, the
    sum exact."""

    def __init__(self, stage: Stage, threads: int, inline: bool = True) -> None:
        super().__init__(stage, max(1, threads))
        self.inline = inline
        self._pool: ThreadPoolExecutor | None = None
        self._batch: BatchRun | None = None

    def _run(self, batch: list[Record], tag: Any) -> BatchDone:
        assert self._batch is not None
        return BatchDone(batch, *self._batch(batch), tag)

    def submit(self, batch: list[Record], tag: Any = None) -> Future[BatchDone]:
        if self._batch is None:
            self.stage.setup()
            self._batch = BatchRun(self.stage)
        if self.slots > 1 or not self.inline:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix=self.stage.name)
            return self._pool.submit(self._run, batch, tag)
        done: Future[BatchDone] = Future()
        try:
            done.set_result(self._run(batch, tag))
        except Exception as err:
            done.set_exception(err)
        return done

    def close(self, abort: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=abort)


# ---------------------------------------------------------------- worker processes
# in a worker: the stages it holds, set up, by token (the newest few)
_WORKER_STAGES: OrderedDict[str, BatchRun] = OrderedDict()
_KEEP_STAGES = 4


def _exit_with_owner(alive: Connection) -> None:
    """In a worker: block on the owner's pipe; its end (the owner died or closed the
    pool) ends this process at once, whatever it was doing."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)


def _worker_init(alive: Connection) -> None:
    """In a worker, once: exit with the owner; leave Ctrl-C to the owner."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_owner, args=(alive,), daemon=True).start()


def _worker_stage(token: str, blob: bytes) -> BatchRun:
    """In a worker: the stage of ``token``, unpickled and set up on first use."""
    run = _WORKER_STAGES.get(token)
    if run is None:
        stage = pickle.loads(blob)
        stage.setup()
        run = _WORKER_STAGES[token] = BatchRun(stage, portable=True)
        while len(_WORKER_STAGES) > _KEEP_STAGES:
            _WORKER_STAGES.popitem(last=False)
    return run


def _run_in_worker(
    token: str, blob: bytes, name: str, batch: list[Record]
) -> tuple[list[Record], float, dict[str, float]]:
    """In a worker: process one batch; (outputs, seconds, usage added)."""
    try:
        run = _worker_stage(token, blob)
    except Exception as err:  # the stage's setup
        sent = sendable(err)
        sent.add_note(where(name, batch))
        raise sent from None
    return run(batch)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has it (Linux, macOS), else spawn."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class WorkerPool:
    """``size`` worker processes and the pipe whose closing ends them."""

    def __init__(self, size: int, preload: list[str]) -> None:
        ctx = _context()
        if ctx.get_start_method() == "forkserver":
            # modules the forkserver imports once, so forked workers start warm
            ctx.set_forkserver_preload(sorted({"nhr.executors", *preload}))
        self.size = size
        reader, self._alive = ctx.Pipe(duplex=False)
        self.executor = ProcessPoolExecutor(
            max_workers=size, mp_context=ctx, initializer=_worker_init, initargs=(reader,)
        )
        self._reader = reader

    def kill(self) -> None:
        """End every worker now (batches in flight are lost; nothing was written)."""
        processes = dict(getattr(self.executor, "_processes", None) or {})
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._alive.close()
        for proc in processes.values():
            if proc.is_alive():
                proc.kill()
        for proc in processes.values():
            proc.join(timeout=5)
        self._reader.close()

    def close(self) -> None:
        """Stop the workers once they finish what they hold."""
        self.executor.shutdown(wait=True)
        self._alive.close()
        self._reader.close()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()
STARTED: Counter[int] = Counter()  # worker pools started in this process, by size


def worker_pool(size: int, preload: list[str]) -> WorkerPool:
    """This process's worker pool of ``size`` processes, made on first use and reused
    by later stages (a pool of another size, or a broken one, is replaced)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and (_POOL.size != size or _broken(_POOL)):
            _POOL.kill()
            _POOL = None
        if _POOL is None:
            _POOL = WorkerPool(size, preload)
            STARTED[size] += 1
        return _POOL


def _broken(pool: WorkerPool) -> bool:
    return bool(getattr(pool.executor, "_broken", False))


def shutdown_workers(kill: bool = False) -> None:
    """End this process's worker pool, if any (``kill``: without waiting)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.kill() if kill else _POOL.close()
            _POOL = None


class ProcessExecutor(BatchExecutor):
    """Batches in up to ``processes`` worker processes of this process's pool.

    Up to twice as many batches as processes are in flight, so a worker never waits
    for the runner to write the previous shard. ``close`` ends the pool's workers."""

    def __init__(self, stage: Stage, processes: int) -> None:
        super().__init__(stage, 2 * processes)
        try:
            self._blob = pickle.dumps(stage)
        except Exception as err:
            raise TypeError(
                f"stage {stage.name} declares cpu work but cannot be pickled for worker "
                f"processes ({type(err).__name__}: {err}); make what it holds picklable, "
                "or declare its work 'io'"
            ) from err
        self._token = uuid.uuid4().hex
        self._processes = processes
        modules = {type(stage).__module__}
        modules |= {type(b).__module__ for b in stage.backends() if declared_work(b)}
        self._preload = sorted(modules)
        self._pool: WorkerPool | None = None
        self._futures: set[Future[Any]] = set()

    def submit(self, batch: list[Record], tag: Any = None) -> Future[BatchDone]:
        if self._pool is None:
            self._pool = worker_pool(self._processes, self._preload)
        done: Future[BatchDone] = Future()
        inner = self._pool.executor.submit(
            _run_in_worker, self._token, self._blob, self.stage.name, batch
        )
        self._futures.add(inner)

        def finish(f: Future[Any]) -> None:
            self._futures.discard(f)
            if f.cancelled():
                done.cancel()
                done.set_running_or_notify_cancel()
                return
            err = f.exception()
            if isinstance(err, BrokenProcessPool):
                err = StageError(
                    f"a worker process of stage {self.stage.name!r} died while processing "
                    f"a batch from {batch[0].id if batch else '-'!r} (killed, or out of "
                    "memory?); rerun: finished batches are kept"
                )
            if err is not None:
                done.set_exception(err)
            else:
                out, seconds, usage = f.result()
                done.set_result(BatchDone(batch, out, seconds, usage, tag))

        inner.add_done_callback(finish)
        return done

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        self._pool = None
        running = any(not f.done() for f in list(self._futures))
        shutdown_workers(kill=abort and running)  # batches still running would be discarded


def executor_for(stage: Stage, workers: int, inline: bool = True) -> BatchExecutor:
    """The executor of a stage: worker processes for cpu work when more than one worker
    is allowed, else threads (one for device work). ``workers`` 0 means one per core.
    ``inline`` False keeps a one-thread executor off the caller's thread (a chain's
    scheduler must not block on one link's batch)."""
    n = resolve_workers(workers)
    kind = stage.work_kind()
    if kind == CPU and n > 1:
        return ProcessExecutor(stage, n)
    return ThreadExecutor(stage, 1 if kind == DEVICE else n, inline)
