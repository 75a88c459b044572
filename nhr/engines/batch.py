"""One batch of a stage, as every engine runs it: timed, with the API usage it added,
and a failure noted with the stage, the rows and the process (and made portable where
it must cross a process boundary).

The local engine's threads and worker processes and the Ray engine's workers all run
batches through ``BatchRun``, so what a ``Done`` holds means the same on every engine.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
import traceback
from typing import Any

from nhr.records import Record


class StageError(RuntimeError):
    """A stage failed in a worker with an error that could not be sent back as itself."""


def sendable(err: BaseException) -> BaseException:
    """``err`` if it survives a pickle round trip, else a StageError carrying its text."""
    try:
        back = pickle.loads(pickle.dumps(err))
        if type(back) is type(err) and str(back) == str(err):
            return err
    except Exception:  # any failure to pickle means: send its text instead
        pass
    text = "".join(traceback.format_exception(err)).rstrip()
    return StageError(f"{type(err).__name__}: {err}\n{text}")


def where(stage_name: str, batch: list[Record], node: bool = False) -> str:
    """The note added to a batch's error: which stage, which rows, which process (and
    node, on a cluster)."""
    first = batch[0].id if batch else "-"
    note = f"in stage {stage_name!r}, a batch of {len(batch)} rows from {first!r}, "
    note += f"process {os.getpid()}"
    return f"{note} on node {socket.gethostname()}" if node else note


def usage_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per key, without the keys that did not move."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in delta.items() if v}


class BatchRun:
    """Runs a set-up stage's batches. Each batch's usage is the stage's usage since the
    previous batch finished (with several batches in flight in threads, the split
    between them is approximate, the sum exact). ``portable``: errors are made
    sendable to another process; ``node``: their note names the host."""

    def __init__(self, stage: Any, portable: bool = False, node: bool = False) -> None:
        self.stage = stage
        self.portable = portable
        self.node = node
        self._lock = threading.Lock()
        self._mark = stage.usage()

    def __call__(self, batch: list[Record]) -> tuple[list[Record], float, dict[str, float]]:
        """(outputs, seconds, usage added) of one batch; the stage's error, noted."""
        t0 = time.perf_counter()
        try:
            out = self.stage.process_batch(batch)
        except Exception as err:
            sent = sendable(err) if self.portable else err
            sent.add_note(where(self.stage.name, batch, self.node))
            if sent is err:
                raise
            raise sent from None
        seconds = time.perf_counter() - t0
        with self._lock:
            now = self.stage.usage()
            delta, self._mark = usage_delta(self._mark, now), now
        return out, seconds, delta

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()
