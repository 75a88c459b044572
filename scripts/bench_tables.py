"""Benchmark of the table engine: runner throughput, table reads, files, edit planning.

Prints one JSON object. Each measurement runs in a fresh subprocess (so its peak RSS is
its own): a pass-through stage through the runner (rows/s, files written per 100k rows),
a table read back into records (rows/s), and planning an N×k×M edit grid with a cap
(seconds, peak RSS above the inputs). Runs against any checkout of ``nhr`` on the
PYTHONPATH: where the planner still builds the whole grid as objects, the plan is
measured on ``--plan-sample`` sources and scaled linearly (marked ``extrapolated``).

    PYTHONPATH=. python scripts/bench_tables.py --rows 50000 --sources 515000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar


def _rss_mb() -> float:
    """Current resident memory in MiB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _candidates(n: int) -> list[Any]:
    from nhr.records import CandidateRow

    return [
        CandidateRow(
            f"s{i // 25:07d}-i{i % 5}-e{(i // 5) % 5}",
            f"s{i // 25:07d}",
            f"p{i // 500:06d}",
            f"p{i // 500:06d}-i{i % 5}",
            f"make the object number {i % 5} red",
            "colour",
            "flat",
            f"blobs/aa/{i // 25:064d}.png",
            f"blobs/bb/{i:064d}.png",
            512,
            384,
            i,
            24,
            3.5,
            "null-editor",
            0.0,
        )
        for i in range(n)
    ]


def bench_runner(n: int, batch: int, columnar: bool) -> dict[str, Any]:
    """A pass-through stage over ``n`` candidates through the runner."""
    from nhr.records import CandidateRow
    from nhr.runner import Runner
    from nhr.stages.base import Stage
    from nhr.store import RunStore

    class PassThrough(Stage[CandidateRow, CandidateRow]):
        name = "candidates_copy"
        input_type = CandidateRow
        output_type = CandidateRow
        resources: ClassVar[dict[str, float]] = {}

        def settings(self) -> dict[str, Any]:
            return {}

        def process_batch(self, rows: list[CandidateRow]) -> list[CandidateRow]:
            return rows

    import nhr.runner

    if columnar and not hasattr(nhr.runner, "Inputs"):
        return {"skipped": "this runner takes only a list of records"}
    rows = _candidates(n)
    inputs: Any = rows
    if columnar:
        from nhr.records import to_table

        inputs = to_table(rows, CandidateRow)
    with tempfile.TemporaryDirectory() as warm:  # first-use imports are not the runner's
        Runner(RunStore(warm), batch_size=batch, progress=False).run(PassThrough(), rows[:50])
        Runner(RunStore(warm), batch_size=batch, progress=False).run(PassThrough(), rows[:50])
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        runner = Runner(store, batch_size=batch, progress=False)
        t0 = time.perf_counter()
        runner.run(PassThrough(), inputs)
        seconds = time.perf_counter() - t0
        files = sum(1 for p in (Path(tmp) / "tables").rglob("*") if p.is_file())
        t0 = time.perf_counter()
        again = runner.run(PassThrough(), inputs)
        resume = time.perf_counter() - t0
        assert again.stats["processed_rows"] == 0
    return {
        "rows": n,
        "batch_size": batch,
        "input": "pa.Table" if columnar else "list",
        "seconds": round(seconds, 3),
        "rows_per_s": round(n / seconds),
        "files": files,
        "files_per_100k_rows": round(files * 100_000 / n, 1),
        "rerun_all_done_seconds": round(resume, 3),
        "peak_rss_mb": round(_peak_mb()),
    }


def bench_read(n: int) -> dict[str, Any]:
    """Reading an ``n``-row candidates table back into records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nhr.records import CandidateRow, from_table, to_table
    from nhr.store import RunStore

    table = to_table(_candidates(n), CandidateRow)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        tables: Any = store.tables
        if hasattr(tables, "commit"):
            tables.commit("candidates", table, [], {})
        else:
            folder = tables.folder("candidates")
            folder.mkdir(parents=True)
            pq.write_table(table, folder / "part-0.parquet")
        t0 = time.perf_counter()
        read = store.tables.read("candidates", CandidateRow.schema())
        arrow_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        records = from_table(read, CandidateRow)
        records_s = time.perf_counter() - t0
    assert len(records) == n and isinstance(read, pa.Table)
    return {
        "rows": n,
        "arrow_read_seconds": round(arrow_s, 3),
        "to_records_seconds": round(records_s, 3),
        "rows_per_s": round(n / (arrow_s + records_s)),
    }


def _grid_tables(n_sources: int, n_prompts: int, k: int) -> tuple[Any, Any]:
    import numpy as np
    import pyarrow as pa

    prompt_of = np.arange(n_sources) * n_prompts // n_sources
    pids = pa.array([f"p{i:06d}" for i in range(n_prompts)])
    sources = pa.table(
        {
            "source_id": [f"s{i:07d}" for i in range(n_sources)],
            "prompt_id": pids.take(pa.array(prompt_of)),
            "prompt": pa.array(["a red cube on a table"] * n_sources),
            "style": pa.array(["flat"] * n_sources),
            "seed": pa.array(np.arange(n_sources)),
            "width": pa.array(np.full(n_sources, 512)),
            "height": pa.array(np.full(n_sources, 384)),
            "image": [f"blobs/aa/{i:064d}.png" for i in range(n_sources)],
            "model_id": pa.array(["null-t2i"] * n_sources),
            "steps": pa.array(np.full(n_sources, 4)),
            "guidance": pa.array(np.zeros(n_sources)),
            "seconds": pa.array(np.zeros(n_sources)),
        }
    )
    prompts = pa.table(
        {
            "prompt_id": pids,
            "seed": pa.array(np.arange(n_prompts)),
            "text": pa.array(["a red cube on a table"] * n_prompts),
            "style": pa.array(["flat"] * n_prompts),
            "topic": pa.array(["objects"] * n_prompts),
            "instructions": [
                [f"edit {j} of prompt {i}" for j in range(k)] for i in range(n_prompts)
            ],
            "edit_types": [["colour"] * k for _ in range(n_prompts)],
            "prompter_id": pa.array(["null"] * n_prompts),
            "prompter_version": pa.array(["v1"] * n_prompts),
        }
    )
    return sources, prompts


def bench_plan(n_sources: int, n_prompts: int, k: int, m: int, cap: int, sample: int) -> dict:
    """Planning the edit grid over ``n_sources`` gated sources, capped at ``cap`` jobs."""
    from nhr.stages import edits

    lazy = hasattr(edits, "EditPlan")
    scale = 1.0
    if not lazy:  # the planner builds every job: measure a sample, scale it
        scale = n_sources / sample
        n_prompts = max(1, round(n_prompts / scale))
        n_sources = sample
        cap = round(cap / scale)
    sources, prompts = _grid_tables(n_sources, n_prompts, k)
    if not lazy:
        from nhr.records import PromptRow, SourceRow, from_table

        sources = from_table(sources, SourceRow)
        prompts = {p.prompt_id: p for p in from_table(prompts, PromptRow)}
    base = _rss_mb()
    t0 = time.perf_counter()
    plan = edits.plan_edit_jobs(sources, prompts, m, (18, 28), (2.5, 3.5), 0, cap)
    emitted, chunks, biggest = 0, 0, 0
    if lazy:
        for chunk in plan:
            emitted += chunk.num_rows
            chunks += 1
            biggest = max(biggest, chunk.num_rows)
    else:
        emitted = len(plan)
    seconds = time.perf_counter() - t0
    return {
        "planner": "lazy" if lazy else "whole grid (extrapolated linearly)",
        "grid_jobs": round(n_sources * k * m * scale),
        "emitted_jobs": round(emitted * scale),
        "chunks": chunks,
        "largest_chunk_rows": biggest,
        "seconds": round(seconds * scale, 2),
        "peak_rss_above_inputs_mb": round((_peak_mb() - base) * scale),
        "extrapolated": not lazy,
        "measured_on_sources": n_sources,
    }


def _child(args: argparse.Namespace, what: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--only", what, *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=50_000, help="rows through the runner")
    ap.add_argument("--batch", type=int, default=16, help="the runner's batch size")
    ap.add_argument("--read-rows", type=int, default=100_000, help="rows of the table read")
    ap.add_argument("--sources", type=int, default=515_000, help="gated sources of the plan")
    ap.add_argument("--prompts", type=int, default=63_292, help="prompts of the plan")
    ap.add_argument("--k", type=int, default=5, help="instructions per prompt")
    ap.add_argument("--m", type=int, default=5, help="edit seeds per instruction")
    ap.add_argument("--cap", type=int, default=3_072_385, help="MAX_EDIT_JOBS of the plan")
    ap.add_argument(
        "--plan-sample", type=int, default=10_000, help="sources for a whole-grid planner"
    )
    ap.add_argument("--only", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        if args.only == "runner_list":
            out = bench_runner(args.rows, args.batch, columnar=False)
        elif args.only == "runner_table":
            out = bench_runner(args.rows, args.batch, columnar=True)
        elif args.only == "read":
            out = bench_read(args.read_rows)
        else:
            out = bench_plan(args.sources, args.prompts, args.k, args.m, args.cap, args.plan_sample)
        print(json.dumps(out))
        return
    import nhr

    result: dict[str, Any] = {"nhr": str(Path(nhr.__file__).parent)}
    for what in ("runner_list", "runner_table", "read", "plan"):
        result[what] = _child(args, what)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
