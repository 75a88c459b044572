"""The stage contract shared by every stage.

A stage is built from its config and backends, ``setup()`` runs once per worker, and
``process_batch(rows) -> rows`` maps a batch of typed input records to typed output
records. A stage knows nothing of files, notebooks, Ray or progress bars, so the same
class runs in the local runner here and in a distributed adapter elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from nhr.records import Record

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
    config: Mapping[str, Any] = MappingProxyType({})

    def setup(self) -> None:
        """Load models or open clients; called once per worker before the first batch."""

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
        """Cumulative API usage of this stage's backends (calls, tokens, cost), summed over
        every attribute that reports usage; empty for local backends."""
        total: dict[str, float] = {}
        for value in vars(self).values():
            report = getattr(value, "usage", None)
            if callable(report):
                for key, n in report().items():
                    total[key] = total.get(key, 0.0) + float(n)
        return total

    @abstractmethod
    def process_batch(self, rows: list[In]) -> list[Out]:
        """Map a batch of input records to output records (zero, one or more per input)."""
