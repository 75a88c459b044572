"""Benchmark streaming: a chain against its stages run one by one, one JSON object out.

A simulated GPU editor (``work = "device"``: one batch at a time, sleeping
``--gpu-seconds`` per row) feeds a simulated API judge (``work = "io"``: threads,
sleeping ``--judge-seconds`` per batch, as a batch of concurrent requests would) and a
second judge after it. Run one by one, the judges wait for the editor to finish and the
editor idles while they run; streamed, the judges work while the editor generates, so
the chain's wall time approaches the editor's busy time. Sleeping, not computing, keeps
the figures meaningful on a shared 2-core machine.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_flow.py --rows 400

Output: ``{"one_by_one": {...}, "streamed": {...}, "ratio": ...}``, each part with
``wall_seconds``, ``editor_busy_seconds`` (the editor's recorded seconds), ``rows`` per
table and ``wall_over_busy``; ``ratio`` is streamed over one-by-one wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nhr.engines.base import Link, outputs_forward, passed_forward
from nhr.records import PromptJob, Record, Verdict
from nhr.runner import Runner
from nhr.stages.base import Stage
from nhr.store import RunStore


@dataclass(frozen=True)
class Made(Record):
    key: ClassVar[str] = "made_id"
    made_id: str
    seed: int


class Editor(Stage[PromptJob, Made]):
    """A GPU editor: one batch at a time, ``seconds`` per row."""

    name = "made"
    input_type = PromptJob
    output_type = Made
    work: ClassVar[str | None] = "device"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process_batch(self, rows: list[PromptJob]) -> list[Made]:
        time.sleep(self.seconds * len(rows))
        return [Made(f"{r.prompt_id}-{k}", r.seed * 2 + k) for r in rows for k in range(2)]


class Judge(Stage[Made, Verdict]):
    """An API judge: ``seconds`` per batch (its requests run concurrently)."""

    input_type = Made
    output_type = Verdict
    work: ClassVar[str | None] = "io"

    def __init__(self, name: str, seconds: float, modulus: int) -> None:
        self.name = name  # type: ignore[misc]
        self.seconds = seconds
        self.modulus = modulus

    def process_batch(self, rows: list[Made]) -> list[Verdict]:
        time.sleep(self.seconds)
        return [
            Verdict(r.made_id, r.seed % self.modulus != 0, "ok", None, None, "{}", "j", "1", None)
            for r in rows
        ]


def _stages(args: argparse.Namespace) -> tuple[Editor, Judge, Judge]:
    return (
        Editor(args.gpu_seconds),
        Judge("prefilter", args.judge_seconds, 3),
        Judge("validator", args.judge_seconds, 5),
    )


def _part(runner: Runner, wall: float) -> dict[str, Any]:
    busy = runner.store.read_stats("made")["seconds"]
    rows = {t: runner.store.tables.count(t) for t in ("made", "prefilter", "validator")}
    return {
        "wall_seconds": round(wall, 2),
        "editor_busy_seconds": round(busy, 2),
        "wall_over_busy": round(wall / busy, 3),
        "rows": rows,
    }


def one_by_one(root: Path, args: argparse.Namespace, jobs: list[PromptJob]) -> dict[str, Any]:
    runner = Runner(RunStore(root), args.batch_size, args.workers, progress=False)
    editor, prefilter, validator = _stages(args)
    t0 = time.perf_counter()
    runner.run_chain([Link(editor, args.editor_batch)], jobs)
    made = runner.store.tables.read("made")
    runner.run(prefilter, made)
    verdicts = runner.store.tables.read("prefilter").to_pylist()
    passed = {v["subject_id"] for v in verdicts if v["passed"]}
    runner.run(validator, made.filter([m in passed for m in made.column("made_id").to_pylist()]))
    return _part(runner, time.perf_counter() - t0)


def streamed(root: Path, args: argparse.Namespace, jobs: list[PromptJob]) -> dict[str, Any]:
    runner = Runner(RunStore(root), args.batch_size, args.workers, progress=False)
    editor, prefilter, validator = _stages(args)
    links = [
        Link(editor, args.editor_batch, forward=outputs_forward),
        Link(prefilter, args.batch_size, forward=passed_forward),
        Link(validator, args.batch_size),
    ]
    t0 = time.perf_counter()
    runner.run_chain(links, jobs)
    return _part(runner, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=400, help="editor jobs (default 400)")
    ap.add_argument("--gpu-seconds", type=float, default=0.01, help="editor seconds per job")
    ap.add_argument("--judge-seconds", type=float, default=0.1, help="judge seconds per batch")
    ap.add_argument("--batch-size", type=int, default=16, help="judge batch size")
    ap.add_argument("--editor-batch", type=int, default=4, help="editor batch size, streamed")
    ap.add_argument("--workers", type=int, default=2, help="judge threads per stage")
    args = ap.parse_args()
    jobs = [PromptJob(f"p{i:06d}", i, "") for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        a = one_by_one(Path(tmp) / "a", args, jobs)
        b = streamed(Path(tmp) / "b", args, jobs)
    assert a["rows"] == b["rows"], (a["rows"], b["rows"])
    ratio = round(b["wall_seconds"] / a["wall_seconds"], 3)
    print(json.dumps({"one_by_one": a, "streamed": b, "ratio": ratio, "params": vars(args)}))


if __name__ == "__main__":
    main()
