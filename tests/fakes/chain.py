"""A three-stage chain of tiny pure stages, for the streamed runner's tests: ``Grow``
(jobs -> squares, some jobs giving two rows), ``Judge`` (a verdict per square) and
``Finish`` (the squares the judge passed -> finished rows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow.compute as pc

from nhr.engines.base import Link, outputs_forward, passed_forward
from nhr.records import PromptJob, Record, Verdict, from_table
from nhr.runner import Runner
from nhr.stages.base import Stage


@dataclass(frozen=True)
class Square(Record):
    key: ClassVar[str] = "square_id"
    square_id: str
    value: int


@dataclass(frozen=True)
class Finished(Record):
    key: ClassVar[str] = "square_id"
    square_id: str
    value: int


class Grow(Stage[PromptJob, Square]):
    name = "grown"
    input_type = PromptJob
    output_type = Square

    def settings(self) -> dict[str, Any]:
        return {}

    def process_batch(self, rows: list[PromptJob]) -> list[Square]:
        out = []
        for r in rows:
            out.append(Square(r.prompt_id, r.seed * r.seed))
            if r.seed % 7 == 0:  # some jobs give two rows
                out.append(Square(r.prompt_id + "b", -r.seed))
        return out


class Judge(Stage[Square, Verdict]):
    name = "judged"
    input_type = Square
    output_type = Verdict

    def settings(self) -> dict[str, Any]:
        return {}

    def process_batch(self, rows: list[Square]) -> list[Verdict]:
        return [
            Verdict(
                r.square_id,
                r.value % 3 != 0,
                "ok" if r.value % 3 else "three",
                None,
                None,
                "{}",
                "j",
                "v1",
                None,
            )
            for r in rows
        ]


class Finish(Stage[Square, Finished]):
    name = "finished"
    input_type = Square
    output_type = Finished

    def settings(self) -> dict[str, Any]:
        return {}

    def process_batch(self, rows: list[Square]) -> list[Finished]:
        return [Finished(r.square_id, r.value + 1) for r in rows]


TABLES = {"grown": Square, "judged": Verdict, "finished": Finished}


def jobs(n: int) -> list[PromptJob]:
    return [PromptJob(f"p{i:04d}", i, "") for i in range(n)]


def links(grow: Stage, judge: Stage, finish: Stage, sizes: tuple[int, int, int]) -> list[Link]:
    """The chain grow -> judge -> finish (finish takes the squares the judge passed)."""
    return [
        Link(grow, sizes[0], forward=outputs_forward),
        Link(judge, sizes[1], forward=passed_forward),
        Link(finish, sizes[2]),
    ]


def run_one_by_one(runner: Runner, n: int) -> None:
    """The chain's stages run one after the other, each over the table before it."""
    runner.run(Grow(), jobs(n))
    grown = runner.store.tables.read("grown", Square.schema())
    runner.run(Judge(), grown)
    verdicts = runner.store.tables.read("judged", Verdict.schema())
    keep = verdicts.filter(verdicts.column("passed")).column("subject_id")
    runner.run(Finish(), grown.filter(pc.is_in(grown.column("square_id"), value_set=keep)))


def table_rows(runner_or_store: Any) -> dict[str, list[tuple]]:
    """Every table of the chain as sorted tuples."""
    store = getattr(runner_or_store, "store", runner_or_store)
    return {
        name: sorted(
            tuple(r.to_row().values())
            for r in from_table(store.tables.read(name, cls.schema()), cls)
        )
        for name, cls in TABLES.items()
    }
