"""Benchmark the engine: the whole mining chain on the null world, one JSON object out.

Runs every step of ``nhr.pipeline.CHAIN`` (prompts, sources, gate, edits, prefilter,
lowlevel, validate, select, bootstrap.*, export), then ``nhr.summary.write_summary``,
through the real runner, store and ``Pipeline`` in a fresh run folder, with backends that
answer at once (``nhr.backends.null``: a few fixed 32×32 images, verdicts drawn by hash at
the paper's rates). What it measures is the engine's own bookkeeping: batching, shard
writing, table reads, record building, whole-table steps, resume checks.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_engine.py --prompts 633
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_engine.py --prompts 6329 --time-limit 600

Volumes per prompt follow the paper's Table 2 (63,292 prompts → 1.17M sources → 516k
gated → 3.07M edits of a 12.9M grid): K_INSTRUCTIONS = 5, N_SOURCE_SEEDS = 19 (the paper's
18.5 sources per prompt, rounded up), M_EDIT_SEEDS = 5, MAX_EDIT_JOBS = 48.54 per prompt.
BATCH_SIZE = 256 rows by default (a large run's judge and API batches; ``--batch-size``),
WORKERS = 1 by default (``--workers 0``: the null world's renderer, editor and judges
run in one worker process per core).
DEDUP is off by default: with a handful of fixed images nearly every triplet is an exact
duplicate of another, which would empty the export (``--dedup`` turns it on anyway).

Output (stdout, one JSON object): per step ``rows`` (``rows_out`` of the stats files the
step wrote, ``stats/<table>.json``), ``seconds``, ``cpu_seconds``, ``rows_per_s``, the
process's peak RSS after the step (``peak_rss_mb``, since the start) and within the step
(``step_peak_rss_mb``, sampled every 50 ms); the whole chain's seconds; peak RSS of the
process and of its children (``resource.getrusage``); files and bytes written in the run
folder, by top folder; the parameters; the load average before and after (the machine
may be shared).

Targets for the engine on a 2-core machine: N = 6,329 (a tenth of Table 2) in ≤ 3 min and
≤ 2 GB peak RSS; N = 63,292 (Table 2) in ≤ 30 min and ≤ 4 GB, with peak memory barely
growing with N.

``--time-limit S`` stops a run after S seconds (SIGALRM) and still prints the JSON, with
``completed: false`` and the step it stopped in.

``--prompts 633,6329`` (several sizes, ascending) runs each size in a process of its own
(peak RSS is per process), writes each size's object to stderr as that size ends, and
prints ``{"runs": [each size's object], "memory_growth": ...}``: the peak RSS (process
and children, the larger) of the largest size over that of the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars off, whatever the engine draws

# Table 2 of the paper, per prompt
PAPER_PROMPTS = 63_292
PAPER_EDITS = 3_072_385
PAPER_ROWS = {
    "T2I images": 1_171_773,
    "after plausibility gate": 515_584,
    "edits generated": 3_072_385,
    "after soft pre-filter": 1_321_126,
    "after low-level check": 1_281_492,
    "after hard validator": 471_523,
    "after argmax selection": 325_287,
    "after inversion": 633_904,
}
PAPER_FINAL = 720_088  # after backward consistency: the triplets of the dataset
ROLES = (
    "PROMPTER",
    "T2I",
    "GATE_JUDGE",
    "EDITOR",
    "PREFILTER_JUDGE",
    "VALIDATOR",
    "INVERTER",
)


class TimeLimit(Exception):
    """Raised by SIGALRM when ``--time-limit`` is up."""


def bench_params(
    n_prompts: int, batch_size: int, dedup: bool, seed: int = 0, workers: int = 1
) -> dict[str, Any]:
    """The run's UPPER_CASE parameters: the null world at Table 2's volumes per prompt."""
    return {
        "SEED": seed,
        **{role: "null" for role in ROLES},
        "N_PROMPTS": n_prompts,
        "K_INSTRUCTIONS": 5,
        "N_SOURCE_SEEDS": 19,
        "LONG_SIDE_MIN": 32,
        "LONG_SIDE_MAX": 32,
        "ASPECT_MAX": 1.0,
        "M_EDIT_SEEDS": 5,
        "MAX_EDIT_JOBS": max(1, round(n_prompts * PAPER_EDITS / PAPER_PROMPTS)),
        "BATCH_SIZE": batch_size,
        "WORKERS": workers,
        "DEDUP": dedup,
    }


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its waited-for children, MiB."""
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return {"self": round(own, 1), "children": round(kids, 1)}


def current_rss_mb() -> float | None:
    """This process's resident memory now, MiB (Linux only)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class RssSampler:
    """Samples this process's resident memory every ``interval`` seconds in a daemon
    thread: ``take()`` gives the highest value since the last ``take`` (a step's own
    peak, which ``ru_maxrss``, the peak since the start, hides behind earlier steps)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = current_rss_mb() or 0.0
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            rss = current_rss_mb()
            if rss is not None and rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def take(self) -> float:
        """The highest resident memory seen since the last call, MiB; starts anew."""
        peak, self.peak = self.peak, current_rss_mb() or 0.0
        return round(max(peak, self.peak), 1)


def stats_snapshot(run_dir: Path) -> dict[str, int]:
    """Modification time of every stats file of a run folder, by table name."""
    folder = run_dir / "stats"
    if not folder.is_dir():
        return {}
    return {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def rows_written(run_dir: Path, before: dict[str, int]) -> dict[str, int | None]:
    """``rows_out`` of each stats file written since ``before``, by table name."""
    out: dict[str, int | None] = {}
    for name, mtime in sorted(stats_snapshot(run_dir).items()):
        if before.get(name) == mtime:
            continue
        try:
            stats = json.loads((run_dir / "stats" / f"{name}.json").read_text())
        except (OSError, ValueError):
            out[name] = None
            continue
        rows = stats.get("rows_out")
        out[name] = int(rows) if isinstance(rows, (int, float)) else None
    return out


def files_written(run_dir: Path) -> dict[str, Any]:
    """Files and bytes in a run folder, in all and by top-level entry."""
    by_top: dict[str, dict[str, int]] = {}
    total_files = total_bytes = 0
    for dirpath, _, names in os.walk(run_dir):
        rel = Path(dirpath).relative_to(run_dir)
        top = rel.parts[0] if rel.parts else "."
        for name in names:
            try:
                size = (Path(dirpath) / name).stat().st_size
            except OSError:
                continue
            entry = by_top.setdefault(top if rel.parts else name, {"files": 0, "bytes": 0})
            entry["files"] += 1
            entry["bytes"] += size
            total_files += 1
            total_bytes += size
    return {"files": total_files, "bytes": total_bytes, "by_folder": dict(sorted(by_top.items()))}


def read_funnel(run_dir: Path, n_prompts: int) -> list[dict[str, Any]] | None:
    """The summary's funnel, each stage's rows also per prompt beside Table 2's."""
    try:
        funnel = json.loads((run_dir / "summary.json").read_text())["funnel"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out = []
    for row in funnel:
        rows = row.get("rows")
        paper = PAPER_ROWS.get(row.get("stage", ""))
        out.append(
            {
                **row,
                "per_prompt": round(rows / n_prompts, 3) if isinstance(rows, int) else None,
                "paper_per_prompt": round(paper / PAPER_PROMPTS, 3) if paper else None,
            }
        )
    last = out[-1] if out else None
    if last is not None:
        last["paper_per_prompt"] = round(PAPER_FINAL / PAPER_PROMPTS, 3)
    return out


def resolve(pipe: Any, step: str) -> Any:
    """The bound method a CHAIN step names (``bootstrap.invert`` → pipe.bootstrap.invert)."""
    target = pipe
    for part in step.split("."):
        target = getattr(target, part)
    return target


def git_commit() -> str | None:
    """The commit of the checkout this script runs from, if it is a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def open_pipeline(run_dir: Path, params: dict[str, Any]) -> Any:
    """``Pipeline.open`` with progress bars off (a keyword the engine may drop)."""
    from nhr.pipeline import Pipeline

    try:
        return Pipeline.open(run_dir, params, progress=False)
    except TypeError:
        return Pipeline.open(run_dir, params)


def run_bench(run_dir: Path, params: dict[str, Any], time_limit: float) -> dict[str, Any]:
    """Run the chain and the summary in ``run_dir``; the figures of every step."""
    from nhr.pipeline import CHAIN

    steps: list[dict[str, Any]] = []
    report: dict[str, Any] = {"completed": False, "stopped_in": None}

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit

    if time_limit > 0:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    t_chain, cpu_chain = time.perf_counter(), cpu_seconds()
    step = "open"
    sampler = RssSampler()
    try:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        pipe = open_pipeline(run_dir, params)
        steps.append(step_figures("open", run_dir, {}, t0, cpu0, sampler))
        for step in (*CHAIN, "summary"):
            before = stats_snapshot(run_dir)
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            if step == "summary":
                pipe.write_summary()
            else:
                resolve(pipe, step)()
            steps.append(step_figures(step, run_dir, before, t0, cpu0, sampler))
        report["completed"] = True
    except TimeLimit:
        report["stopped_in"] = step
    finally:
        if time_limit > 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
    report["chain_seconds"] = round(time.perf_counter() - t_chain, 3)
    report["chain_cpu_seconds"] = round(cpu_seconds() - cpu_chain, 3)
    report["steps"] = steps
    return report


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far: on a shared machine this
    moves far less with the load than wall seconds do."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def step_figures(
    step: str,
    run_dir: Path,
    before: dict[str, int],
    t0: float,
    cpu0: float,
    sampler: RssSampler | None = None,
) -> dict[str, Any]:
    """Rows, seconds, rows/s and memory of a step that has just finished: the peak RSS
    so far, the step's own peak (sampled) and the RSS at its end."""
    seconds = time.perf_counter() - t0
    tables = rows_written(run_dir, before)
    known = [r for r in tables.values() if r is not None]
    rows = sum(known) if known else None
    return {
        "step": step,
        "tables": tables,
        "rows": rows,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds() - cpu0, 3),
        "rows_per_s": round(rows / seconds, 1) if rows and seconds > 0 else None,
        "peak_rss_mb": peak_rss_mb()["self"],
        "step_peak_rss_mb": sampler.take() if sampler is not None else None,
        "rss_mb": current_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the benchmark, print its JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--prompts",
        required=True,
        help="N_PROMPTS (Table 2: 63,292); several, comma-separated: memory_growth",
    )
    ap.add_argument("--run-dir", type=Path, help="run folder (new or empty); default: a temp one")
    ap.add_argument("--keep", action="store_true", help="keep the run folder afterwards")
    ap.add_argument("--batch-size", type=int, default=256, help="BATCH_SIZE (default 256)")
    ap.add_argument("--dedup", action="store_true", help="run dedup in assemble (module note)")
    ap.add_argument("--seed", type=int, default=0, help="SEED of the run")
    ap.add_argument(
        "--workers", type=int, default=1, help="WORKERS (1: one process; 0: one per core)"
    )
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop after S seconds (0: none)")
    args = ap.parse_args(argv)
    sizes = [int(n) for n in str(args.prompts).split(",") if n.strip()]
    if len(sizes) > 1:
        if args.run_dir is not None:
            ap.error("--run-dir takes one size of --prompts")
        return compare_sizes(sorted(sizes), argv if argv is not None else sys.argv[1:])
    args.prompts = sizes[0]

    if args.run_dir is not None:
        run_dir = args.run_dir
        if run_dir.exists() and any(run_dir.iterdir()):
            ap.error(f"--run-dir {run_dir} is not empty: give a new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="nhr-bench-"))
    params = bench_params(args.prompts, args.batch_size, args.dedup, args.seed, args.workers)
    load_before = os.getloadavg()
    try:
        report = run_bench(run_dir, params, args.time_limit)
        files = files_written(run_dir)
        funnel = read_funnel(run_dir, args.prompts)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    out = {
        "benchmark": "engine on the null world",
        "prompts": args.prompts,
        **report,
        "peak_rss_mb": peak_rss_mb(),
        "files_written": files,
        "funnel": funnel,
        "params": params,
        "run_dir": str(run_dir) if args.keep else None,
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "commit": git_commit(),
        },
    }
    print(json.dumps(out, indent=1))
    return 0 if report["completed"] else 2


def peak_of(run: dict[str, Any]) -> float:
    """A size's peak RSS, MiB: the larger of its process's and its children's."""
    peak = run["peak_rss_mb"]
    return max(peak["self"], peak["children"])


def compare_sizes(sizes: list[int], argv: list[str]) -> int:
    """Run this script once per size, each in its own process; print the runs and the
    growth of the peak RSS from the smallest size to the largest."""
    rest: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--prompts":
            skip = True
        elif not a.startswith("--prompts="):
            rest.append(a)
    runs = []
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--prompts", str(n), *rest],
            stdout=subprocess.PIPE,
            text=True,
        )
        if proc.returncode not in (0, 2):
            print(f"the run of {n} prompts failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        runs.append(json.loads(proc.stdout))
        # each size's figures as it ends, so a stopped comparison keeps the sizes it ran
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    growth = peak_of(runs[-1]) / max(peak_of(runs[0]), 1e-9)
    out = {
        "benchmark": "engine on the null world, several sizes",
        "prompts": sizes,
        "peak_rss_mb": [peak_of(r) for r in runs],
        "memory_growth": round(growth, 3),
        "volume_growth": round(sizes[-1] / sizes[0], 3),
        "runs": runs,
    }
    print(json.dumps(out, indent=1))
    return 0 if all(r["completed"] for r in runs) else 2


if __name__ == "__main__":
    sys.exit(main())
