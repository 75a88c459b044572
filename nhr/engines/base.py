"""The contract between the runner and an engine: a chain of links, streamed.

A chain is a list of ``Link``s: a stage, the batch size of its calls, and how the
outputs of a finished batch become inputs of the next link (``forward``). The runner
hands an engine batches of the first link's pending inputs; the engine runs every link
as its inputs arrive (the editor keeps generating while the judges score what it made)
and yields each finished batch of every link as a ``Done``. The runner alone commits
them to the run's tables, so exactly-once does not depend on where a batch ran or how
often a retried task ran it: a batch whose input keys are already committed is dropped.

``forward`` and ``batcher`` must be picklable (top-level functions or objects of
top-level classes): a distributed engine sends them to its workers with the stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nhr.records import Record
from nhr.stages.base import Stage

# (a finished batch's inputs, its outputs) -> the next link's inputs
Forward = Callable[[list[Record], list[Record]], list[Record]]
# a link's inputs, in arrival order -> the calls to make, each a list of inputs
Batcher = Callable[[Iterable[Record], int], Iterator[list[Record]]]


def outputs_forward(inputs: list[Record], outputs: list[Record]) -> list[Record]:
    """The next link takes this link's outputs (the editor's candidates)."""
    return outputs


def passed_forward(inputs: list[Record], outputs: list[Record]) -> list[Record]:
    """The next link takes the inputs whose verdict passed (a filter's survivors);
    verdicts come one per input, in order."""
    return [row for row, verdict in zip(inputs, outputs, strict=True) if verdict.passed]


@dataclass(frozen=True)
class Link:
    """One stage of a chain.

    ``batch_size`` inputs go to each ``process_batch`` call. ``forward`` (None for the
    last link) maps a finished batch to the next link's inputs. ``batcher``, when given,
    groups the link's arriving inputs into calls itself (for instance one resolution and
    step count per call) instead of fixed slices in arrival order; it gets the inputs as
    they arrive and ``batch_size`` as the most per call.
    """

    stage: Stage
    batch_size: int
    forward: Forward | None = None
    batcher: Batcher | None = None


@dataclass(frozen=True)
class Done:
    """A finished batch of link ``link``: its inputs, its outputs, the seconds the stage
    spent on it and the API usage it added (calls, tokens, cost; empty for local work)."""

    link: int
    inputs: list[Record]
    outputs: list[Record]
    seconds: float
    usage: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """Executes chains. ``stream`` pulls batches of link 0's inputs lazily (a bounded
    number ahead), so a caller that stops iterating them (a budget spent) starts nothing
    more; each link's outputs flow to the next as soon as its batch finishes. An empty
    batch is a pause: link 0 has nothing more right now, and the engine asks again once
    it has yielded at least one more finished batch (never while nothing is in flight)."""

    name: str = "engine"
    # whether every finished batch of link 0 is handed back as the very list object it
    # was fed (not a copy): then the runner knows a list handed back twice without
    # keeping the keys it took (an engine that copies, or runs batches elsewhere, keeps
    # False)
    hands_back_fed_lists: bool = False

    @abstractmethod
    def stream(self, links: Sequence[Link], batches: Iterable[list[Record]]) -> Iterator[Done]:
        """Run ``batches`` (link 0's inputs) through ``links``; yield every finished
        batch of every link, in completion order. Errors of a stage propagate."""

    def close(self) -> None:
        """Release workers and actors this engine holds (called once, at the end);
        an engine that holds none keeps this default."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the engine is and how it ran the last stream (name, workers, cluster),
        JSON-ready: the runner writes it into the stats of every stage of the chain."""
        return {"name": self.name}
