"""Benchmark the mining loop: SEARCH grid and SEARCH adaptive side by side, one JSON out.

Both searches run in one invocation, in two fresh run folders, on the same seeds (same
prompts, sources and gate verdicts), through the real ``Pipeline``, in each world of
``--world``: ``independent`` (the default synthetic world: every seed of a (source,
instruction) independent, the worst case for a search that stops early), ``paper``
(``PAPER_WORLD``: pairs of their own difficulty, ``SYNTHETIC_GROUP_SPREAD paper``, and
the paper's gate share) or ``both`` (the default). Each world also runs a
``calibration`` grid under the paper's scheduler (K = 5, N = 19, M = 5, jobs drawn
uniformly from the grid, capped at the paper's 48.5 per prompt, as ``bench_engine.py``
sizes it; ``--calibration-prompts`` prompts, no simulated GPU): its ``pass_rate`` and
``argmax_drop`` are the figures the paper's funnel gives (15.3 %, 31 %).

- the editor is the synthetic world's on a simulated GPU (``SYNTHETIC_GPU_SECONDS``:
  ``--gpu-seconds`` per image, slept, one call at a time), so a 2-core machine runs it
  beside the judges;
- the pre-filter and the hard validator are Gemini, called through the fake Gemini
  server (``tests/fakes/model_server.py``, in its own process, as a real API would be)
  answering after ``--latency`` seconds with the synthetic world's own judge verdict on
  the request's images (``--synthetic-judge``), so the truth audit means something;
- the plausibility gate stays the local synthetic judge: it judges sources, before any
  edit, identically for both searches.

The mining step is ``Pipeline.mine()`` then ``select()`` where the pipeline has a fused,
streaming loop, else the stages one after another (edits, prefilter, lowlevel, validate,
select).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_mining.py -p SEARCH_GUIDANCE=best
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_mining.py --prompts 24 --gpu-seconds 0.2 \
        -p SEARCH_ROUND_SEEDS=2
    # a world where 30 % of (source, instruction) pairs are impossible for the editor
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_mining.py -p SYNTHETIC_HARD_SHARE=0.3
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_mining.py --world paper -p SEARCH_GUIDANCE=best
    # the paper world with the posterior stop (nhr.search_stop)
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_mining.py --world paper --prompts 96 \
        --gpu-seconds 0.02 --calibration-prompts 32 -p SEARCH_GUIDANCE=best \
        -p SEARCH_STOP_BELOW=0.1 -p SEARCH_STOP_RECALL=0.9

Output (stdout, one JSON object): per world (``independent``, ``paper``) ``grid``,
``adaptive``, ``calibration``, ``ratios`` and ``targets``; ``grid`` and ``adaptive`` each
with ``accepted``
(rows of ``mined``), ``generations`` (rows of ``candidates``), ``generations_per_accepted``,
``judge_calls_per_accepted`` (API calls of the pre-filter and the validator),
``pass_rate`` (validator passes / generations), ``argmax_drop`` (1 − groups with a
pass / passes), ``diagnostic`` (the search diagnostic, ``nhr.search_diagnostic``),
``audit_precision`` (share of the accepted mined triplets the synthetic truth calls
correct), ``wall_seconds`` and ``editor_busy_seconds`` (``stats/mining.json`` where the
mining loop writes it, else the bench's clock around the mining steps and the editor's
device seconds), ``mean_images_per_call`` (``editor_images / editor_calls`` of the
candidates stats, else the simulated editor's own ``images / calls``); the grid part
also holds ``seed_order_bound`` (what stopping each (source, instruction) at its first
pass would at best have saved on the grid's own candidates: how far the targets are
reachable in this world at all); then ``ratios`` (adaptive / grid) and ``targets`` (each
target, its figures and ``met``; the issue's targets are the ``paper`` world's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars off, whatever the engine draws

ROOT = Path(__file__).resolve().parent.parent
SEARCHES = ("grid", "adaptive")
WORLDS = ("independent", "paper")
KEYS = (
    "accepted",
    "generations",
    "generations_per_accepted",
    "judge_calls_per_accepted",
    "audit_precision",
    "wall_seconds",
    "editor_busy_seconds",
    "mean_images_per_call",
)
MINING_STEPS = ("edits", "prefilter", "lowlevel", "validate", "select")
# the paper's scheduler (Table 2 per prompt, as bench_engine.py): K, N, M, jobs per prompt
PAPER_SCHEDULE = {"K_INSTRUCTIONS": 5, "N_SOURCE_SEEDS": 19, "M_EDIT_SEEDS": 5}
PAPER_JOBS_PER_PROMPT = 48.54
PAPER_PASS_RATE, PAPER_ARGMAX_DROP = (0.153, 0.02), (0.31, 0.04)  # value, tolerance


def bench_params(args: argparse.Namespace) -> dict[str, Any]:
    """The UPPER_CASE parameters both searches share."""
    return {
        "SEED": args.seed,
        "PROMPTER": "synthetic",
        "T2I": "synthetic",
        "EDITOR": "synthetic",
        "GATE_JUDGE": "synthetic",
        "PREFILTER_JUDGE": "gemini",
        "VALIDATOR": "gemini",
        "INVERTER": "synthetic",
        "PREFILTER_MODEL": "gemini-2.5-flash",
        "VALIDATOR_MODEL": "gemini-2.5-flash",
        "GEMINI_THINKING_BUDGET": 0,
        "SYNTHETIC_GPU_SECONDS": args.gpu_seconds,
        "N_PROMPTS": args.prompts,
        "K_INSTRUCTIONS": args.k,
        "N_SOURCE_SEEDS": args.sources,
        "M_EDIT_SEEDS": args.m,
        "LONG_SIDE_MIN": 96,
        "LONG_SIDE_MAX": 128,
        "ASPECT_MAX": 2.0,
        "EDIT_GUIDANCE": [2.5, 3.5],
        "RESOLUTIONS": args.resolutions,  # bucketed sizes and few step counts: calls batch
        "EDIT_STEPS_LEVELS": args.steps_levels,
        "THRESHOLD": 4.7,
        "BATCH_SIZE": args.batch_size,
        "WORKERS": args.workers,
        "API_CONCURRENCY": args.concurrency,
        "API_TIMEOUT_SECONDS": 30.0,
        "API_ATTEMPTS": 4,
        "API_IMAGE_MAX_SIDE": 1024,  # sources stay whole: the judge sees the pixels
    }


def parse_extra(items: list[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` options (VALUE as YAML: 2, 0.5, true, [1, 2])."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"-p {item!r}: give NAME=VALUE, e.g. -p M_EDIT_SEEDS=6")
        out[name.strip().upper()] = yaml.safe_load(value)
    return out


def has_search() -> bool:
    """Whether the config knows ``SEARCH`` (the adaptive candidate search)."""
    from nhr.config import FIELDS

    return "search" in FIELDS


def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    """The fake Gemini server in its own process, judging as the synthetic world; its URL."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/fakes/model_server.py"),
            "--port",
            "0",
            "--latency",
            str(latency),
            "--synthetic-judge",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # "listening on http://127.0.0.1:PORT"
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the fake Gemini server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def audit_precision(pipe: Any) -> float | None:
    """Share of the accepted mined triplets that the synthetic truth calls correct."""
    from nhr.evaluate.truth import truths_of

    rows = pipe.tables.read("mined", ["source_image", "instruction", "edited_image"])
    if not rows.num_rows:
        return None
    verdicts = truths_of(pipe.tables, pipe.backends.truth, rows)
    return round(sum(bool(v.correct) for v in verdicts) / rows.num_rows, 4)


def seed_order_bound(pipe: Any) -> dict[str, Any]:
    """What a search in rounds of one seed could at best save on the grid run's own
    candidates: each (source, instruction) generated in seed order up to its first
    validator pass (``first_pass``: all M seeds where none passes; ``oracle``: one seed
    there, as if hopelessness were known at once), judge calls counted as the grid made
    them (one per judged candidate; request-cache hits make the grid's own a little
    fewer). Accepted stays the grid's. A bound for the adaptive targets, not a result."""
    cands = pipe.tables.read("candidates", ["candidate_id"]).column("candidate_id").to_pylist()
    passed = set(pipe.tables.passed_ids("validator").to_pylist())
    judged = [
        set(pipe.tables.read(name, ["subject_id"]).column("subject_id").to_pylist())
        for name in ("prefilter", "validator")
        if pipe.tables.exists(name)
    ]
    groups: dict[str, list[tuple[int, str]]] = {}
    for cid in cands:
        group, _, m = cid.rpartition("-e")
        groups.setdefault(group, []).append((int(m), cid))
    out: dict[str, Any] = {}
    for name in ("first_pass", "oracle"):
        gens = calls = accepted = 0
        for members in groups.values():
            order = [cid for _, cid in sorted(members)]
            hit = next((i for i, cid in enumerate(order) if cid in passed), None)
            accepted += hit is not None
            n = hit + 1 if hit is not None else (len(order) if name == "first_pass" else 1)
            gens += n
            calls += sum(cid in j for cid in order[:n] for j in judged)
        out[name] = {
            "accepted": accepted,
            "generations_per_accepted": _div(gens, accepted),
            "judge_calls_per_accepted": _div(calls, accepted),
        }
    return out


def run_diagnostic(pipe: Any) -> dict[str, Any]:
    """The search diagnostic of a run's candidates (where no mining loop recorded it)."""
    from nhr.search_diagnostic import diagnose

    ids = pipe.tables.read("candidates", ["candidate_id"]).column("candidate_id").to_pylist()
    passed = set(pipe.tables.passed_ids("validator").to_pylist())
    return diagnose(ids, [cid in passed for cid in ids])


def mine(pipe: Any) -> float:
    """Run the mining step (fused loop or stages); the bench's wall seconds of it."""
    t0 = time.perf_counter()
    if callable(getattr(pipe, "mine", None)):
        pipe.mine()
        pipe.select()
    else:
        for step in MINING_STEPS:
            getattr(pipe, step)()
    return time.perf_counter() - t0


def run_search(run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """One search in its own run folder: sources and gate, then mining; its figures."""
    from fakes.remote import close_clients

    from nhr.pipeline import Pipeline
    from nhr.summary import cost_per_triplet

    pipe = Pipeline.open(run_dir, params, progress=False)
    t0 = time.perf_counter()
    for step in ("prompts", "sources", "gate"):
        getattr(pipe, step)()
    before_mining = time.perf_counter() - t0
    clock = mine(pipe)
    close_clients(pipe.backends)
    stats = pipe.store.all_stats()
    cost = cost_per_triplet(pipe.tables, stats)
    usage = stats.get("candidates", {}).get("usage", {})
    mining = stats.get("mining") or {}
    accepted, generations = cost["triplets"], cost["generations"]
    calls = sum(c or 0 for k, c in cost["judge_calls"].items() if k != "gate")
    if usage.get("editor_calls"):
        per_call, per_call_from = usage["editor_images"] / usage["editor_calls"], "editor_calls"
    elif usage.get("calls"):
        per_call, per_call_from = usage["images"] / usage["calls"], "simulated editor calls"
    else:
        per_call, per_call_from = None, None
    wall = mining.get("wall_seconds", clock)
    busy = mining.get("editor_busy_seconds", usage.get("device_seconds"))
    bound = seed_order_bound(pipe) if params.get("SEARCH", "grid") == "grid" else None
    diagnostic = mining.get("diagnostic") or run_diagnostic(pipe)
    figures = {
        "accepted": accepted,
        "generations": generations,
        "generations_per_accepted": _div(generations, accepted),
        "pass_rate": diagnostic.get("pass_rate"),
        "argmax_drop": diagnostic.get("argmax_drop"),
        "judge_calls_per_accepted": _div(calls, accepted),
        "audit_precision": audit_precision(pipe),
        "wall_seconds": round(float(wall), 3),
        "editor_busy_seconds": None if busy is None else round(float(busy), 3),
        "mean_images_per_call": None if per_call is None else round(per_call, 3),
        "judge_calls": cost["judge_calls"],
        "cache_hits": {
            name: int((stats.get(name, {}).get("usage") or {}).get("cache_hits", 0))
            for name in ("prefilter", "validator")
        },
        "api_usd_per_accepted": cost["api_usd_per_triplet"],
        "timing_from": "stats/mining.json" if mining else "bench clock + editor device_seconds",
        "mean_images_per_call_from": per_call_from,
        "bench_clock_mining_seconds": round(clock, 3),
        "seconds_before_mining": round(before_mining, 3),
        "gated_sources": pipe.tables.count_passed("plausibility"),
        "rounds": len(mining.get("rounds", [])) if mining else None,
        **({"seed_order_bound": bound} if bound else {}),
        "diagnostic": diagnostic,
    }
    for part in (bound or {}).values():
        for key in ("generations_per_accepted", "judge_calls_per_accepted"):
            part[f"{key}_vs_grid"] = _div(part[key], figures[key])
    return figures


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def ratios(grid: dict[str, Any], adaptive: dict[str, Any]) -> dict[str, float | None]:
    """adaptive / grid of every figure both report."""
    return {k: _div(adaptive.get(k), grid.get(k)) for k in KEYS}


def targets(
    grid: dict[str, Any], adaptive: dict[str, Any] | None, max_batch: int
) -> list[dict[str, Any]]:
    """The issue's targets, each with the figures it compares and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(measure: str, target: str, value: Any, bound: Any, met: bool | None) -> None:
        out.append(
            {"measure": measure, "target": target, "value": value, "bound": bound, "met": met}
        )

    def rel(key: str, factor: float, le: bool) -> None:
        a = None if adaptive is None else adaptive.get(key)
        g = grid.get(key)
        bound = None if g is None else round(g * factor, 4)
        met = None if a is None or bound is None else (a <= bound if le else a >= bound)
        add(f"adaptive {key}", f"{'≤' if le else '≥'} {factor}× grid's", a, bound, met)

    rel("generations_per_accepted", 0.5, True)
    rel("accepted", 0.95, False)
    a = None if adaptive is None else adaptive.get("audit_precision")
    g = grid.get("audit_precision")
    bound = None if g is None else round(g - 0.01, 4)
    add(
        "adaptive audit_precision",
        "≥ grid's − 0.01",
        a,
        bound,
        None if a is None or bound is None else a >= bound,
    )
    rel("judge_calls_per_accepted", 0.5, True)
    for name, part in (("grid", grid), ("adaptive", adaptive)):
        if part is None:
            continue
        wall, busy = part["wall_seconds"], part["editor_busy_seconds"]
        bound = None if busy is None else round(1.1 * busy, 3)
        add(
            f"{name} wall_seconds",
            "≤ 1.1× editor_busy_seconds",
            wall,
            bound,
            None if bound is None else wall <= bound,
        )
    for name, part in (("grid", grid), ("adaptive", adaptive)):
        if part is None:
            continue
        value = part["mean_images_per_call"]
        add(
            f"{name} mean_images_per_call (synthetic editor, max batch = BATCH_SIZE; "
            "the issue's target is for a tiny-diffusers run)",
            "≥ 0.9× max batch",
            value,
            round(0.9 * max_batch, 3),
            None if value is None else value >= 0.9 * max_batch,
        )
    return out


def world_params_of(world: str) -> dict[str, Any]:
    """The parameters that make ``world`` (none: the default synthetic world)."""
    from nhr.backends.synthetic.world import PAPER_WORLD

    return dict(PAPER_WORLD) if world == "paper" else {}


def calibration_params(params: dict[str, Any], prompts: int) -> dict[str, Any]:
    """The grid under the paper's scheduler: K = 5, N = 19, M = 5, the paper's 48.5 jobs
    per prompt drawn uniformly from the grid; no simulated GPU (only rates are read)."""
    return {
        **params,
        **PAPER_SCHEDULE,
        "N_PROMPTS": prompts,
        "MAX_EDIT_JOBS": max(1, round(prompts * PAPER_JOBS_PER_PROMPT)),
        "SEARCH": "grid",
        "SYNTHETIC_GPU_SECONDS": 0.0,
    }


def calibration_targets(calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's funnel figures against the capped grid's."""
    out = []
    for key, (value, tol) in (("pass_rate", PAPER_PASS_RATE), ("argmax_drop", PAPER_ARGMAX_DROP)):
        got = calibration.get(key)
        out.append(
            {
                "measure": f"calibration {key}",
                "target": f"{value} ± {tol}",
                "value": got,
                "bound": [round(value - tol, 4), round(value + tol, 4)],
                "met": None if got is None else abs(got - value) <= tol,
            }
        )
    return out


def git_commit() -> str | None:
    """The commit of the checkout this script runs from."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run both searches, print the JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--prompts", type=int, default=12, help="N_PROMPTS (default 12)")
    ap.add_argument("--k", type=int, default=4, help="K_INSTRUCTIONS (default 4)")
    ap.add_argument("--sources", type=int, default=3, help="N_SOURCE_SEEDS (default 3)")
    ap.add_argument("--m", type=int, default=5, help="M_EDIT_SEEDS (default 5, the paper's)")
    ap.add_argument(
        "--gpu-seconds", type=float, default=0.1, help="simulated GPU seconds per image"
    )
    ap.add_argument("--latency", type=float, default=0.25, help="fake server latency, s")
    ap.add_argument(
        "--resolutions", default="kontext", help="RESOLUTIONS: free, paper, kontext (default)"
    )
    ap.add_argument("--steps-levels", type=int, default=2, help="EDIT_STEPS_LEVELS (default 2)")
    ap.add_argument("--batch-size", type=int, default=16, help="BATCH_SIZE (default 16)")
    ap.add_argument("--workers", type=int, default=2, help="WORKERS (default 2)")
    ap.add_argument("--concurrency", type=int, default=32, help="API_CONCURRENCY")
    ap.add_argument("--seed", type=int, default=0, help="SEED of both runs")
    ap.add_argument(
        "-p", dest="extra", action="append", default=[], help="NAME=VALUE for both runs"
    )
    ap.add_argument("--run-dir", type=Path, help="parent of the two run folders (new)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    ap.add_argument(
        "--world", choices=(*WORLDS, "both"), default="both", help="world(s) to run (both)"
    )
    ap.add_argument(
        "--calibration-prompts",
        type=int,
        default=24,
        help="N_PROMPTS of each world's calibration grid (default 24)",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))  # the fakes

    params = {**bench_params(args), **parse_extra(args.extra)}
    if args.run_dir is not None:
        if args.run_dir.exists() and any(args.run_dir.iterdir()):
            ap.error(f"--run-dir {args.run_dir} is not empty: give a new folder")
        base = args.run_dir
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix="nhr-bench-mining-"))
    searchable = has_search()
    server, url = start_server(args.latency)
    saved = {k: os.environ.get(k) for k in ("GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL")}
    os.environ.update(GEMINI_API_KEY="bench-fake-key", GOOGLE_GEMINI_BASE_URL=url)
    for var in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        os.environ.pop(var, None)
    load_before = os.getloadavg()
    worlds = WORLDS if args.world == "both" else (args.world,)
    out: dict[str, Any] = {
        "benchmark": "mining loop: SEARCH grid vs adaptive, simulated GPU, fake Gemini judges"
    }
    t0 = time.perf_counter()
    try:
        for world in worlds:
            world_params = {**params, **world_params_of(world)}
            parts: dict[str, Any] = {}
            for search in SEARCHES:
                if not searchable:
                    if search != "grid":
                        parts[search] = None
                        continue
                    run_params = world_params
                else:
                    run_params = {**world_params, "SEARCH": search}
                parts[search] = run_search(base / world / search, run_params)
            cal_params = calibration_params(world_params, args.calibration_prompts)
            calibration = run_search(base / world / "calibration", cal_params)
            grid, adaptive = parts["grid"], parts.get("adaptive")
            out[world] = {
                "grid": grid,
                "adaptive": adaptive,
                "calibration": calibration,
                "ratios": ratios(grid, adaptive) if adaptive else None,
                "targets": targets(grid, adaptive, args.batch_size)
                + (calibration_targets(calibration) if world == "paper" else []),
                "world": world_params_of(world),
            }
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    out.update(
        {
            "notes": None
            if searchable
            else "this checkout has no SEARCH field: only grid (today's mining) ran",
            "seconds_total": round(time.perf_counter() - t0, 3),
            "params": params,
            "calibration_prompts": args.calibration_prompts,
            "latency_seconds": args.latency,
            "run_dir": str(base) if args.keep else None,
            "machine": {
                "cpus": os.cpu_count(),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
                "commit": git_commit(),
            },
        }
    )
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
