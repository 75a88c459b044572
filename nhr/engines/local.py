"""The local engine: a chain's links in this process's executors, joined by bounded queues.

Each link runs in the executor its stage's work calls for (``nhr.executors``: worker
processes for cpu work, threads for io, one slot for a device), up to that executor's
slots in flight. When a batch of link ``i`` finishes, ``link.forward`` turns it into
inputs of link ``i + 1``, which wait in that link's queue until they fill a batch of
its ``batch_size`` (or its ``batcher``'s calls). A partial batch goes out when the link
would otherwise sit idle, or once everything upstream of it is finished, so no row is
held back for ever.

Link 0's inputs may pause (an empty batch: nothing more right now); the engine asks
again after the next batch finishes, so inputs can depend on what finished.

Back-pressure: more of link 0's inputs are pulled only while every downstream queue
holds fewer than ``queue_batches`` batches per slot of its link, so memory stays
bounded and a slow judge slows the editor down, while the editor never waits as long
as the judges have less than that much work queued.

A one-link chain, and any link of cpu-bound work, runs in its stage's executor in the
caller's thread where it has one slot (``WORKERS`` 1), batches pulled as slots free up;
links of io or device work keep threads of their own, so their waits overlap the rest.
The executors (and so the worker processes) end with the stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from nhr.engines.base import Done, Engine, Link
from nhr.executors import CPU, BatchDone, BatchExecutor, executor_for, resolve_workers
from nhr.records import Record

# batches per slot a downstream link may have queued before link 0 waits
QUEUE_BATCHES = 4


class _Queue:
    """The inputs a downstream link has been given and not yet started: loose rows, and
    calls its batcher already formed."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.rows: deque[Record] = deque()
        self.calls: deque[list[Record]] = deque()
        self.queued_rows = 0

    def __len__(self) -> int:
        return self.queued_rows

    def put(self, rows: list[Record]) -> None:
        self.rows.extend(rows)
        self.queued_rows += len(rows)

    def take(self, partial: bool) -> list[Record] | None:
        """The next call to submit: a full batch, or (``partial``) whatever is queued;
        None when there is none."""
        size = self.link.batch_size
        if not self.calls and self.rows and (partial or len(self.rows) >= size):
            if self.link.batcher is not None:
                rows, self.rows = list(self.rows), deque()
                self.calls.extend(c for c in self.link.batcher(rows, size) if c)
            else:
                n = min(size, len(self.rows))
                self.calls.append([self.rows.popleft() for _ in range(n)])
        if not self.calls:
            return None
        call = self.calls.popleft()
        self.queued_rows -= len(call)
        return call


class LocalEngine(Engine):
    """Runs chains in this process: worker processes, threads and bounded queues.

    ``workers`` bounds each link's executor as the runner's ``workers`` did (0: one per
    core); ``queue_batches`` is the back-pressure bound, in batches per slot."""

    name = "local"
    hands_back_fed_lists = True  # its executors give each batch back as it was fed

    def __init__(self, workers: int = 0, queue_batches: int = QUEUE_BATCHES) -> None:
        resolve_workers(workers)  # refuse a bad value now, not at the first batch
        if queue_batches < 1:
            raise ValueError(f"queue_batches must be >= 1, got {queue_batches}")
        self.workers = workers
        self.queue_batches = queue_batches

    def describe(self) -> dict[str, Any]:
        """The engine's name, its executors' slots (``workers``, resolved) and its
        back-pressure bound, for a chain's stats."""
        return {
            "name": self.name,
            "workers": resolve_workers(self.workers),
            "queue_batches": self.queue_batches,
        }

    def bound(self, link: Link, slots: int) -> int:
        """Rows a downstream link may have queued before link 0 waits."""
        return self.queue_batches * max(1, slots) * link.batch_size

    def stream(self, links: Sequence[Link], batches: Iterable[list[Record]]) -> Iterator[Done]:
        if not links:
            raise ValueError("a chain needs at least one link")
        for i, link in enumerate(links[:-1]):
            if link.forward is None:
                raise ValueError(
                    f"link {i} ({link.stage.name}) has no forward, but link {i + 1} "
                    f"({links[i + 1].stage.name}) follows it"
                )
        pools: list[BatchExecutor] = []
        aborted = True
        try:
            alone = len(links) == 1
            for link in links:
                # a cpu-bound link with one slot runs in the scheduler's thread: a thread
                # of its own would only hand the interpreter lock back and forth
                inline = alone or link.stage.work_kind() == CPU
                pools.append(executor_for(link.stage, self.workers, inline=inline))
            yield from self._loop(links, pools, iter(batches))
            aborted = False
        finally:
            for pool in pools:
                pool.close(abort=aborted)

    def _loop(
        self, links: Sequence[Link], pools: list[BatchExecutor], source: Iterator[list[Record]]
    ) -> Iterator[Done]:
        """The scheduler: downstream links first (they drain the queues), then link 0
        while every queue is under its bound; yield each batch as it finishes."""
        n = len(links)
        queues = [_Queue(link) for link in links]  # queues[0] stays empty
        bounds = [self.bound(link, pool.slots) for link, pool in zip(links, pools, strict=True)]
        in_flight = [0] * n
        futures: dict[Future[BatchDone], tuple[int, int]] = {}
        seq = 0
        exhausted = paused = False
        while True:
            for i in range(n - 1, 0, -1):
                upstream_done = (
                    exhausted and not any(in_flight[:i]) and not any(len(q) for q in queues[1:i])
                )
                while in_flight[i] < pools[i].slots:
                    # while link 0 waits on results, a row held back for a fuller batch
                    # delays them
                    call = queues[i].take(partial=in_flight[i] == 0 or upstream_done or paused)
                    if call is None:
                        break
                    futures[pools[i].submit(call)] = (i, seq)
                    seq += 1
                    in_flight[i] += 1
            while not exhausted and in_flight[0] < pools[0].slots:
                if any(len(queues[j]) >= bounds[j] for j in range(1, n)):
                    break
                batch = next(source, None)
                if batch is None:
                    exhausted = True
                    break
                if not batch:  # link 0's inputs paused: more once a batch finishes
                    if not futures:
                        raise RuntimeError(
                            f"the inputs of {links[0].stage.name} paused with no batch in "
                            "flight: nothing could ever resume them"
                        )
                    paused = True
                    break
                paused = False
                futures[pools[0].submit(batch)] = (0, seq)
                seq += 1
                in_flight[0] += 1
            if not futures:
                return
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: futures[f][1]):
                i, _ = futures.pop(future)
                in_flight[i] -= 1
                done = future.result()
                forward = links[i].forward
                if i + 1 < n and forward is not None:
                    queues[i + 1].put(forward(done.batch, done.outputs))
                yield Done(i, done.batch, done.outputs, done.seconds, done.usage)
