"""Scaling of the Ray engine with editor actors, and its overhead against the local engine.

A simulated-GPU editor (a ``device`` stage that sleeps ``--seconds-per-image`` a row,
as a GPU-bound editor spends its time, and uses no CPU) streams into a cheap CPU check,
on one local Ray cluster with logical GPUs (a head and two worker nodes, two GPUs
each). For 1, 2 and 4 editor actors it measures edits/s in the steady state (from the
first finished editor batch to the last, so actor start-up is left out) and over the
whole call, and the scaling efficiency against linear: rate(n) / (n * rate(1)).

With ``--tiny-chain`` it also runs the tiny synthetic chain (``Pipeline.run_chain`` up
to ``validate``) once with ``ENGINE local`` and once with ``ENGINE ray`` on a fresh
local Ray cluster, and reports both wall times. With ``--demo ROUNDS`` it only runs
``nhr run configs/demo.yaml`` with ``ENGINE local`` and ``ENGINE ray``, alternating,
ROUNDS times each, and reports each run's wall and CPU seconds, its seconds per
notebook, and the ratios of ray to local.

Prints one JSON object. Example: ``python scripts/bench_ray.py --tiny-chain``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the cluster's workers import this script's stages (``bench_ray``) by name
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "scripts"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

from nhr.engines.base import Link, outputs_forward  # noqa: E402
from nhr.records import PromptJob, Record, Verdict  # noqa: E402
from nhr.stages.base import Stage  # noqa: E402


@dataclass(frozen=True)
class Edit(Record):
    """A simulated edit of one job."""

    key: ClassVar[str] = "edit_id"
    edit_id: str
    seed: int
    pid: int  # the editor actor's process
    start: float  # its call's wall-clock start and end
    end: float


class SleepingEditor(Stage[PromptJob, Edit]):
    """A GPU-bound editor stand-in: ``seconds`` of sleep per image, one call at a time."""

    name = "candidates"
    input_type = PromptJob
    output_type = Edit
    work = "device"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process_batch(self, rows: list[PromptJob]) -> list[Edit]:
        start = time.time()
        time.sleep(self.seconds * len(rows))
        end = time.time()
        return [Edit(f"{r.prompt_id}-e", r.seed, os.getpid(), start, end) for r in rows]


class CheapCheck(Stage[Edit, Verdict]):
    """A CPU check that costs next to nothing."""

    name = "lowlevel"
    input_type = Edit
    output_type = Verdict
    work = "cpu"

    def process_batch(self, rows: list[Edit]) -> list[Verdict]:
        return [Verdict(r.edit_id, True, "ok", None, None, "{}", "c", "v1", None) for r in rows]


def steady_rate(edits: list[Edit]) -> float:
    """Edits/s of the editor actors once each is up: each actor's edits over the span
    from its first call's start to its last call's end, summed over actors (start-up
    left out; any wait for inputs while running counts against it)."""
    total = 0.0
    for pid in {e.pid for e in edits}:
        mine = [e for e in edits if e.pid == pid]
        span = max(e.end for e in mine) - min(e.start for e in mine)
        total += len(mine) / span if span > 0 else 0.0
    return total


def scaling(actor_counts: list[int], seconds: float, per_actor: int, batch: int) -> dict[str, Any]:
    """Edits/s with each number of editor actors on one local cluster of 4 logical GPUs."""
    import ray
    from ray.cluster_utils import Cluster

    from nhr.engines.ray import RayEngine, RaySettings, agent_ports

    for attempt in range(3):  # a node may miss Ray's fixed 30 s start-up on a busy machine
        cluster = Cluster()
        try:
            with agent_ports():  # the raylets wait for no agent
                cluster.add_node(num_cpus=4, include_dashboard=False)
                for _ in range(2):
                    cluster.add_node(num_cpus=4, num_gpus=2)
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {}
    try:
        for n in actor_counts:
            rows = per_actor * n
            jobs = [PromptJob(f"j{i:05d}", i, "") for i in range(rows)]
            links = [
                Link(SleepingEditor(seconds), batch, outputs_forward),
                Link(CheapCheck(), 16),
            ]
            engine = RayEngine(RaySettings(device_actors=n, window_rows=rows), progress=False)
            t0 = time.perf_counter()
            edits: list[Edit] = []
            for done in engine.stream(links, (jobs[i : i + batch] for i in range(0, rows, batch))):
                if done.link == 0:
                    edits.extend(done.outputs)
            wall = time.perf_counter() - t0
            out[str(n)] = {
                "edits": len(edits),
                "actors_seen": len({e.pid for e in edits}),
                "wall_seconds": round(wall, 3),
                "edits_per_s_wall": round(len(edits) / wall, 3),
                "edits_per_s_steady": round(steady_rate(edits), 3),
            }
    finally:
        ray.shutdown()
        cluster.shutdown()
    base = out[str(actor_counts[0])]["edits_per_s_steady"] / actor_counts[0]
    for n in actor_counts:
        row = out[str(n)]
        row["efficiency_vs_linear"] = round(row["edits_per_s_steady"] / (n * base), 3)
    return out


def tiny_chain(until: str) -> dict[str, Any]:
    """Wall seconds of the tiny synthetic chain with ENGINE local and ENGINE ray."""
    from nhr.config import PipelineConfig
    from nhr.pipeline import Pipeline

    tiny = {
        "N_PROMPTS": 6,
        "K_INSTRUCTIONS": 4,
        "N_SOURCE_SEEDS": 4,
        "LONG_SIDE_MIN": 96,
        "LONG_SIDE_MAX": 128,
        "ASPECT_MAX": 3.0,
        "M_EDIT_SEEDS": 3,
        "EDIT_GUIDANCE": [2.5, 3.5],
        "BATCH_SIZE": 8,
    }
    out: dict[str, Any] = {}
    for engine in ("local", "ray"):
        with tempfile.TemporaryDirectory() as folder:
            cfg = PipelineConfig.from_params({**tiny, "ENGINE": engine, "RAY_LOCAL_CPUS": 4})
            pipe = Pipeline(folder, cfg, progress=False)
            t0 = time.perf_counter()
            try:
                pipe.run_chain(until)
            finally:
                pipe.close()
            out[f"{engine}_seconds"] = round(time.perf_counter() - t0, 3)
            out[f"{engine}_candidates"] = pipe.table("candidates").num_rows
    out["ray_over_local"] = round(out["ray_seconds"] / out["local_seconds"], 3)
    return out


def demo_run(engine: str, run_dir: Path, config: str) -> dict[str, Any]:
    """One ``nhr run`` of ``config`` with ``ENGINE engine`` in a fresh process: its wall
    seconds, the CPU seconds (user + sys) of it and every descendant it waited for (as
    ``/usr/bin/time`` counts them), the machine's load average (1 min) as it started,
    the seconds of each notebook, and the exported rows."""
    import re
    import resource
    import subprocess

    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "nhr.cli", "run", config, "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [*command, "-p", "ENGINE", engine],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"nhr run with ENGINE {engine} failed: {proc.stderr[-3000:]}")
    steps: dict[str, float] = {}
    name = ""
    for line in proc.stderr.replace("\r", "\n").splitlines():
        if m := re.match(r"\[\d+/\d+\] (\S+)", line):
            name = m.group(1)
        elif (m := re.match(r"\s+done in ([\d.]+) s", line)) and name:
            steps[name] = float(m.group(1))
    summary = json.loads((run_dir / "summary.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_average_before": round(load, 2),
        "steps": steps,
        "triplets": summary.get("triplets"),
    }


def demo(rounds: int, config: str, keep: Path | None) -> dict[str, Any]:
    """``nhr run`` of the demo with ENGINE local and ENGINE ray, alternating (local, ray,
    local, ray, ...), and the ratio of their wall times (the median of each engine's)."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = keep or Path(scratch)
        for i in range(rounds):
            for engine in ("local", "ray"):
                run = demo_run(engine, root / f"{engine}{i}", config)
                runs.append({"engine": engine, **run})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    def median(engine: str, key: str) -> float:
        values = sorted(r[key] for r in runs if r["engine"] == engine)
        return values[len(values) // 2]

    return {
        "runs": runs,
        "ray_over_local_wall": round(
            median("ray", "wall_seconds") / median("local", "wall_seconds"), 3
        ),
        "ray_over_local_cpu": round(
            median("ray", "cpu_seconds") / median("local", "cpu_seconds"), 3
        ),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", default="1,2,4", help="editor actor counts to run")
    parser.add_argument("--seconds-per-image", type=float, default=0.05)
    parser.add_argument("--images-per-actor", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="images per editor call")
    parser.add_argument("--tiny-chain", action="store_true", help="also time local vs ray")
    parser.add_argument("--until", default="validate", help="last step of the tiny chain")
    parser.add_argument(
        "--demo",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only time `nhr run` of the demo, ENGINE local then ray, ROUNDS times",
    )
    parser.add_argument("--config", default="configs/demo.yaml", help="the run config of --demo")
    parser.add_argument("--keep", type=Path, help="keep --demo's run folders here")
    args = parser.parse_args()
    if args.demo:
        out = {
            "bench": "ray-demo",
            "cores": os.cpu_count(),
            **demo(args.demo, args.config, args.keep),
        }
        print(json.dumps(out, indent=2))
        return
    counts = [int(n) for n in args.actors.split(",")]
    result: dict[str, Any] = {
        "bench": "ray",
        "seconds_per_image": args.seconds_per_image,
        "images_per_actor": args.images_per_actor,
        "batch": args.batch,
        "cores": os.cpu_count(),
        "scaling": scaling(counts, args.seconds_per_image, args.images_per_actor, args.batch),
    }
    top = str(counts[-1])
    result["efficiency_at_max"] = result["scaling"][top]["efficiency_vs_linear"]
    if args.tiny_chain:
        result["tiny_chain"] = tiny_chain(args.until)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
