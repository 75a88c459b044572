"""Seconds of the whole-table steps (select, backward, compose plan, dedup, preference
pairs, funnel, audit, export), this tree beside another (``--other /work/main``), on a
finished run folder (``--run``) or on a synthetic run of ``--candidates`` rows.

    python scripts/bench_tableops.py --candidates 300000 --other /work/main
    python scripts/bench_tableops.py --run results/demo --other /work/main

Each tree runs in its own process on its own copy of the run folder; one JSON object
comes out with both trees' seconds per step and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent.parent


def _params(extra: dict[str, Any]) -> dict[str, Any]:
    return {"PREFILTER": False, "LOWLEVEL": False, **extra}


def make_synthetic(root: Path, candidates: int, seed: int = 0) -> dict[str, int]:
    """A run folder with every table a bootstrapped run has, at ``candidates`` rows, whose
    images come from a small pool of tiny PNGs (the steps measured here read paths)."""
    from PIL import Image

    from nhr.records import (
        CandidateRow,
        DraftRow,
        PromptRow,
        SourceRow,
        Verdict,
        to_table,
    )
    from nhr.stages.composition import plan_compose_jobs
    from nhr.stages.validator import select_argmax
    from nhr.store import RunStore

    rng = np.random.default_rng(seed)
    store = RunStore(root)
    pool = [
        store.blobs.put(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)))
        for _ in range(400)
    ]
    k, m = 4, 4
    n_sources = max(1, candidates // (k * m))
    n_prompts = max(1, n_sources // 10)
    prompts = [
        PromptRow(f"p{i}", i, f"prompt {i}", "flat", "t", ("a",) * k, ("add",) * k, "w", "v")
        for i in range(n_prompts)
    ]
    sources = [
        SourceRow(
            f"s{i:07d}",
            f"p{i % n_prompts}",
            "t",
            "flat",
            i,
            16,
            16,
            pool[i % 400],
            "m",
            4,
            0.0,
            0.0,
        )
        for i in range(n_sources)
    ]
    edit_img = rng.integers(0, 400, n_sources * k * m)
    cands = [
        CandidateRow(
            f"c{i * k * m + j * m + s:08d}",
            src.source_id,
            src.prompt_id,
            f"{src.prompt_id}-i{j}",
            f"do {j}",
            ("add", "remove", "colour")[j % 3],
            "flat",
            src.image,
            pool[edit_img[i * k * m + j * m + s]],
            16,
            16,
            s,
            20,
            2.5,
            "e",
            0.0,
        )
        for i, src in enumerate(sources)
        for j in range(k)
        for s in range(m)
    ]
    adh = rng.choice(
        [3.0, 4.5, 4.6, 4.7, 4.8, 5.0], len(cands), p=[0.3, 0.2, 0.17, 0.11, 0.11, 0.11]
    )
    aes = rng.choice([4.7, 4.8, 4.9, 5.0], len(cands))
    verdicts = [
        Verdict(
            c.candidate_id,
            bool(a >= 4.7),
            "ok" if a >= 4.7 else "low_adherence",
            float(a),
            float(b),
            "{}",
            "j",
            "v",
            None,
        )
        for c, a, b in zip(cands, adh, aes, strict=True)
    ]
    plaus = [Verdict(s.source_id, True, "ok", None, None, "{}", "g", "v", None) for s in sources]
    write = store.tables.write_shard
    write("prompts", "all", to_table(prompts, PromptRow), [], {})
    write("sources", "all", to_table(sources, SourceRow), [], {})
    write("plausibility", "all", to_table(plaus, Verdict), [], {})
    write("candidates", "all", to_table(cands, CandidateRow), [], {})
    write("validator", "all", to_table(verdicts, Verdict), [], {})
    mined, _ = select_argmax(
        *(store.tables.read(t) for t in ("candidates", "validator", "sources", "prompts"))
    )
    tids = mined.column("triplet_id").to_pylist()
    skips = rng.random(len(tids)) < 0.05
    drafts = [
        DraftRow(
            f"i-{t}",
            "inverted",
            (t,),
            "x",
            "y",
            "" if sk else "add it",
            "no_inverse: x" if sk else None,
            "w",
            "v",
        )
        for t, sk in zip(tids, skips, strict=True)
    ]
    ed = mined.column("edited_image").to_pylist()
    src = mined.column("source_image").to_pylist()
    drafts = [
        d
        if d.skip_reason
        else DraftRow(d.triplet_id, d.origin, d.parents, e, s, d.instruction, None, "w", "v")
        for d, e, s in zip(drafts, ed, src, strict=True)
    ]
    back = [
        Verdict(d.triplet_id, bool(rng.random() < 0.87), "ok", 4.9, 4.9, "{}", "j", "v", None)
        for d in drafts
        if not d.skip_reason
    ]
    write("mined", "all", mined, [], {})
    write("inversion", "all", to_table(drafts, DraftRow), [], {})
    write("backward", "all", to_table(back, Verdict), [], {})
    from nhr.bootstrap import backward_consistency

    fwd, inv, _ = backward_consistency(
        mined, store.tables.read("inversion"), store.tables.read("backward")
    )
    jobs = plan_compose_jobs(fwd, inv, 4, 0)
    comp = [
        DraftRow(
            j["job_id"],
            "composed",
            (j["first"], j["second"]),
            j["first_image"],
            j["second_image"],
            "compose",
            None,
            "w",
            "v",
        )
        for j in jobs.to_pylist()
    ]
    write("composition", "all", to_table(comp, DraftRow), [], {})
    cv = [
        Verdict(d.triplet_id, bool(rng.random() < 0.8), "ok", 4.8, 4.9, "{}", "j", "v", None)
        for d in comp
    ]
    write("composed_validator", "all", to_table(cv, Verdict), [], {})
    return {
        "candidates": len(cands),
        "passed": int((adh >= 4.7).sum()),
        "mined": len(tids),
        "composed_drafts": len(comp),
    }


def _timed(out: dict[str, float], name: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    result = fn()
    out[name] = round(time.perf_counter() - t0, 3)
    return result


def measure(run: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Seconds per step with whatever ``nhr`` this process imports."""
    import importlib

    from nhr.config import PipelineConfig
    from nhr.pipeline import Pipeline

    new = hasattr(importlib.import_module("nhr.stages.dedup"), "image_hashes")
    saved = run / "config.yaml"
    if saved.is_file():
        import yaml

        params = {**(yaml.safe_load(saved.read_text()) or {}), **params}
    cfg = PipelineConfig.from_params(params)
    pipe = Pipeline(run, cfg, progress=False)
    (run / "stats" / "mined.json").unlink(missing_ok=True)
    (run / "stats" / "export.json").unlink(missing_ok=True)
    shutil.rmtree(run / "tables" / "image_hashes", ignore_errors=True)
    t: dict[str, float] = {}
    _timed(t, "select", pipe.select)
    if new:
        import pyarrow as pa

        from nhr.stages.dedup import dedup, image_hashes
        from nhr.summary import funnel

        fwd, inv, _ = _timed(t, "backward", pipe.bootstrap.consistent)
        _timed(t, "compose_plan", pipe.bootstrap.compose_jobs)
        comp, _ = pipe.bootstrap.composed(fwd)
        rows = pa.concat_tables([fwd, inv, comp])
        images = pa.chunked_array([rows.column("source_image"), rows.column("edited_image")])
        load = pipe.store.blobs.get

        def first() -> Any:
            hashes, _ = image_hashes(images, None, load)
            pipe.store.tables.write_table("image_hashes", hashes, {})
            return dedup(rows, hashes, load, cfg.bootstrap.dedup_max_distance)

        def rerun() -> Any:
            hashes, _ = image_hashes(images, pipe.tables.read("image_hashes"), load)
            return dedup(rows, hashes, load, cfg.bootstrap.dedup_max_distance)

        _timed(t, "dedup", first)
        _timed(t, "dedup_rerun", rerun)
        (run / "stats" / "triplets.json").unlink(missing_ok=True)
        _timed(t, "assemble", pipe.bootstrap.assemble)
        _timed(t, "preference", pipe.preference_pairs)
        _timed(t, "funnel", lambda: funnel(pipe.tables, cfg))
        truth = pipe.backends.truth if (run / "truth").is_dir() else None
        if truth is not None:
            from nhr.evaluate.truth import audit

            _timed(t, "audit", lambda: audit(pipe.tables, truth, {}))
    else:
        from nhr.stages.composition import plan_compose_jobs
        from nhr.stages.dedup import dedup
        from nhr.summary import funnel

        fwd, inv, _ = _timed(t, "backward", pipe.bootstrap.consistent)

        def plan() -> Any:
            f, i, _ = pipe.bootstrap.consistent()
            texts = {x.parents[0]: x.instruction for x in i}
            return plan_compose_jobs(f, texts, cfg.bootstrap.compose_max_pairs, cfg.run.seed)

        _timed(t, "compose_plan", plan)
        comp, _ = pipe.bootstrap.composed(fwd)
        rows = fwd + inv + comp
        load = pipe.store.blobs.get
        _timed(t, "dedup", lambda: dedup(rows, load, cfg.bootstrap.dedup_max_distance))
        _timed(t, "dedup_rerun", lambda: dedup(rows, load, cfg.bootstrap.dedup_max_distance))
        _timed(t, "assemble", pipe.bootstrap.assemble)
        _timed(
            t,
            "preference",
            lambda: pipe.preference_pairs([x for x in pipe.triplets() if x.origin == "mined"]),
        )
        _timed(t, "funnel", lambda: funnel(pipe))
        if (run / "truth").is_dir():
            from nhr.evaluate.truth import audit

            _timed(t, "audit", lambda: audit(pipe, {}))
    _timed(t, "export", pipe.export)
    t["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    t["exported"] = len(pipe.triplets())
    return t


def _worker(tree: Path, run: Path, params: dict[str, Any]) -> dict[str, Any]:
    """``measure`` in a fresh process importing ``nhr`` from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (
        "import json, sys; sys.path.insert(0, {!r}); from bench_tableops import measure; "
        "from pathlib import Path; print(json.dumps(measure(Path({!r}), json.loads({!r}))))"
    ).format(str(HERE / "scripts"), str(run), json.dumps(params))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (copied, not changed)")
    parser.add_argument("--candidates", type=int, default=300_000)
    parser.add_argument("--other", type=Path, help="another checkout to measure beside this one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tableops-"))
    try:
        info: dict[str, Any] = {}
        if args.run:
            base, params = args.run, {}
            info["run"] = str(args.run)
        else:
            sys.path.insert(0, str(HERE))
            base, params = work / "base", _params({"DEDUP": True})
            info["synthetic"] = make_synthetic(base, args.candidates)
        trees = {"this": HERE, **({"other": args.other} if args.other else {})}
        results = {}
        for name, tree in trees.items():
            copy = work / name
            shutil.copytree(base, copy)
            results[name] = _worker(Path(tree), copy, params)
            shutil.rmtree(copy)
        out: dict[str, Any] = {**info, **results}
        if "other" in results:
            out["speedup"] = {
                k: round(results["other"][k] / v, 2) if v else None
                for k, v in results["this"].items()
                if k in results["other"] and k not in ("exported", "peak_rss_mb")
            }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
