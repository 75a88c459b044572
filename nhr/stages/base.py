"""The stage contract shared by every stage.

A stage is built from its config and backends, ``setup()`` runs once per worker, and
``process_batch(rows) -> rows`` maps a batch of typed input records to typed output
records; ``teardown()`` runs when a worker holding it ends. A stage knows nothing of
files, notebooks, Ray or progress bars, so the same class runs in the local runner here
and in a distributed adapter elsewhere. It names the attributes holding its backends
(``backend_fields``); engines learn what its batches spend (``work_kind``), its API
usage and its share of API limits from the stage alone, through those backends'
contract (``nhr.backends.base.Backend``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from nhr.backends.base import DEVICE, IO, contract, declared_work
from nhr.records import Record

# a stage holding backends of several kinds runs as the most constrained of them
PRECEDENCE = (DEVICE, IO, "cpu")

In = TypeVar("In", bound=Record)
Out = TypeVar("Out", bound=Record)


class Stage(ABC, Generic[In, Out]):
    """Base class: ``name`` is the output table, ``input_type``/``output_type`` its rows.

    ``config`` holds the output-changing config values of every block the stage reads
    (``PipelineConfig.stage_settings(name)``); the pipeline's runner sets it before the
    stage runs, so the settings hash covers every field that changes the stage's output.
    """

    name: ClassVar[str]
    input_type: ClassVar[type[Record]]
    output_type: ClassVar[type[Record]]
    # what the stage's own code spends per batch ("cpu", "io", "device"); None: only its
    # backends' own ``work`` declarations decide (see nhr.executors)
    work: ClassVar[str | None] = None
    # the attributes that hold the stage's backends
    backend_fields: ClassVar[tuple[str, ...]] = ()
    config: Mapping[str, Any] = MappingProxyType({})

    def backends(self) -> list[Any]:
        """The backends the stage holds (``backend_fields``), as built."""
        return [b for b in (getattr(self, f, None) for f in self.backend_fields) if b is not None]

    def work_kind(self) -> str:
        """What the stage's batches spend: its own ``work`` and its backends', the most
        constrained winning (device, then io, then cpu); ``io`` if none declares any."""
        kinds = {declared_work(self)} | {declared_work(b) for b in self.backends()}
        return next((k for k in PRECEDENCE if k in kinds), IO)

    def setup(self) -> None:
        """Load models or open clients; called once per worker before the first batch."""

    def teardown(self) -> None:
        """Release what the backends hold (called when a worker holding the stage ends)."""
        for backend in self.backends():
            contract(backend).close()

    def share_limits(self, fraction: float) -> None:
        """Keep ``fraction`` of each backend's API limits (one of several actors)."""
        for backend in self.backends():
            contract(backend).share_limits(fraction)

    def settings(self) -> dict[str, Any]:
        """Everything that changes the stage's output: its own values and backend ids
        (``own_settings``) and the output-changing config of the blocks it reads.

        The runner records a hash of this with every shard and refuses to resume a table
        written with different settings.
        """
        return {**self.own_settings(), "config": dict(self.config)}

    def own_settings(self) -> dict[str, Any]:
        """The stage's own output-changing values: backend ids, prompt versions, and the
        values it was built with."""
        return {}

    def usage(self) -> dict[str, float]:
        """Cumulative API usage of this stage's backends (calls, tokens, cost), summed;
        empty for local backends."""
        total: dict[str, float] = {}
        for backend in self.backends():
            for key, n in contract(backend).usage().items():
                total[key] = total.get(key, 0.0) + float(n)
        return total

    @abstractmethod
    def process_batch(self, rows: list[In]) -> list[Out]:
        """Map a batch of input records to output records (zero, one or more per input)."""
