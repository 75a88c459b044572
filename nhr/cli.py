"""`nhr` on the command line.

``nhr run CONFIG [-p KEY VALUE ...] [--run-dir DIR]`` validates the config, locks the run
folder, refuses a folder made with other settings, and executes the config's notebooks
in order with papermill, saving the executed copies in ``<run>/notebooks/`` (with ``ENGINE
ray`` and no ``RAY_ADDRESS``, every notebook joins one local Ray cluster started for the
run, and stopped at its end). A rerun after a crash resumes: every stage skips what it
already wrote. ``DIR`` may be an object-store URL (``s3://bucket/run``; endpoint and
credentials from the environment, e.g. ``AWS_ENDPOINT_URL``): the kernels then read and
write the run there, and the executed notebooks are written to the local folder
``results/<name>/notebooks/`` (papermill needs a local file to write cell by cell) and
copied into ``<run>/notebooks/`` after each notebook, failed ones included.
``nhr audit RUN_DIR`` prints the hard validator against the synthetic world's truth.
``nhr push RUN_DIR REPO_ID`` uploads the run's exported dataset to the Hugging Face hub.
``nhr export-for diffsynth|musubi|ai-toolkit RUN_DIR OUT`` lays out the export's training
triplets as DiffSynth-Studio, musubi-tuner or ai-toolkit read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nhr.config import RunConfig, parse_override, reconcile, repo_root
from nhr.engines import run_cluster
from nhr.errors import NhrError, RunFolderError
from nhr.runner import PARENT_ENV, WRITER_LOCK
from nhr.store import RunStore, location, open_files

RUN_LOCK = ".nhr-run.lock"


def notebook_parameters(path: Path) -> set[str]:
    """Names declared in a notebook's ``parameters`` cell."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def run(config: RunConfig, progress: bool = True) -> int:
    """Execute a run config's notebooks in order; returns the exit status. With ``ENGINE
    ray`` and no cluster named, one local Ray cluster serves every notebook of the run
    (``nhr.engines.run_cluster``), stopped when the run ends or fails."""
    where = config.run_dir
    run_dir: Path | str = where.resolve() if isinstance(where, Path) else where
    store = RunStore(run_dir)
    params = config.pipeline.to_params()
    prepare_tiny_models(config)
    with store.lock(RUN_LOCK, "nhr run"):
        reconcile(run_dir, params)
        # a kernel orphaned by a killed earlier run exits within a second; wait for it
        store.lock(WRITER_LOCK, "a notebook kernel", wait_seconds=5.0).acquire().release()
        os.environ[PARENT_ENV] = str(os.getpid())
        with run_cluster(config.pipeline):  # a local one prints its address once up
            status = _notebooks(config, params, run_dir, store, progress)
    if status:
        return status
    s = store.read_json("summary.json")
    if s is not None:
        print(
            f"{s.get('triplets')} triplets in {store.url('dataset')}; "
            f"summary: {store.url('summary.json')}"
        )
    return 0


def _notebooks(
    config: RunConfig,
    params: dict[str, Any],
    run_dir: Path | str,
    store: RunStore,
    progress: bool,
) -> int:
    """Execute the notebooks one by one with papermill (``run``'s body, under its
    locks), saving the executed copies; 1 at the first that fails, else 0."""
    import papermill

    local = store.local_path("notebooks")
    out_dir = local or Path("results").resolve() / config.name / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    for i, nb in enumerate(config.notebooks, 1):
        declared = notebook_parameters(nb)
        nb_params = {k: v for k, v in params.items() if k in declared}
        if "RUN_DIR" in declared:
            nb_params["RUN_DIR"] = str(run_dir)
        if "RUN_NAME" in declared:
            nb_params["RUN_NAME"] = config.name
        print(f"[{i}/{len(config.notebooks)}] {nb.stem}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nb),
                str(out_dir / nb.name),
                parameters=nb_params,
                kernel_name="python3",
                progress_bar=progress,
                cwd=str(root),
                # the kernel's own start-up warnings (plain TCP on localhost) are noise
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except papermill.PapermillExecutionError as err:
            if local is None:
                store.write_bytes(f"notebooks/{nb.name}", (out_dir / nb.name).read_bytes())
            first = (err.evalue or "").strip().splitlines()[:1]
            print(
                f"nhr: notebook {nb.name} failed: {err.ename}: {first[0] if first else ''}"
                f" — see {out_dir / nb.name}; fix it and rerun, finished work is kept",
                file=sys.stderr,
            )
            return 1
        if local is None:
            store.write_bytes(f"notebooks/{nb.name}", (out_dir / nb.name).read_bytes())
        print(f"    done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def prepare_tiny_models(config: RunConfig) -> list[Path]:
    """Write the tiny diffusers models a config names (``tiny_models:``, relative to the
    repository like its model paths) when they are missing; returns the folders written."""
    if config.tiny_models is None:
        return []
    from nhr.backends import tiny_diffusers

    folder = config.tiny_models
    folder = folder if folder.is_absolute() else repo_root() / folder
    names = tiny_diffusers.TINY_MODELS
    missing = [n for n in names if not (folder / n / "model_index.json").is_file()]
    if not missing:
        return []
    print(f"writing tiny diffusers models to {folder}", file=sys.stderr, flush=True)
    written = tiny_diffusers.write_tiny_models(folder)
    return [written[n] for n in missing]


def push(run_dir: str, repo_id: str, private: bool, webdataset: bool) -> int:
    """Upload a run's exported dataset to the Hugging Face hub; prints its URL."""
    from nhr.push import push_dataset

    print(push_dataset(run_dir, repo_id, private=private, webdataset=webdataset))
    return 0


def audit(run_dir: Path | str) -> int:
    """Print the hard validator against the world's truth, from the run's own tables."""
    from nhr.evaluate.truth import judge_vs_truth
    from nhr.pipeline import Pipeline

    if not open_files(run_dir).exists("config.yaml"):
        raise RunFolderError(f"{run_dir} has no config.yaml", "pass the folder of an nhr run")
    pipe = Pipeline.open(run_dir, {}, progress=False)  # the run's own saved config
    if pipe.backends.truth is None:
        raise RunFolderError(f"{run_dir} has no truth", "audit needs a synthetic-world run")
    print(json.dumps(judge_vs_truth(pipe.tables, pipe.backends.truth), indent=2))
    return 0


def add_params(parser: argparse.ArgumentParser, help_text: str) -> None:
    """The repeatable ``-p KEY VALUE`` option of a subcommand."""
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help=help_text,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nhr` command."""
    parser = argparse.ArgumentParser(
        prog="nhr",
        description="Mine image-editing triplets (NoHumansRequired), resumably.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a config's notebooks in order with papermill")
    p_run.add_argument("config", type=Path)
    add_params(p_run, "override a parameter (YAML value)")
    p_run.add_argument(
        "--run-dir",
        type=location,
        default=None,
        help="a folder or an object-store URL (s3://bucket/run); default: results/<name>",
    )
    p_run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p_audit = sub.add_parser("audit", help="judge vs truth of a synthetic-world run")
    p_audit.add_argument("run_dir", type=location)
    p_repair = sub.add_parser("repair", help="check a run's images; remove damaged ones")
    p_repair.add_argument("run_dir", type=location)
    p_repair.add_argument("--dry-run", action="store_true", help="report, change nothing")
    # --- more subcommands: add a parser here and a branch below ---
    p_for = sub.add_parser(
        "export-for", help="lay out a run's training triplets for another trainer"
    )
    p_for.add_argument("format", choices=("diffsynth", "musubi", "ai-toolkit"))
    p_for.add_argument("run_dir", help="a run folder, an export folder or a hub dataset id")
    p_for.add_argument("out", type=Path, help="a new or empty folder")
    p_tiny = sub.add_parser(
        "tiny-models", help="write tiny random diffusers pipelines (no download) to a folder"
    )
    p_tiny.add_argument("folder", type=Path)
    p_tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p_mag = sub.add_parser(
        "magcache-calibrate",
        help="measure the editor's MagCache ratios and store them (DIFFUSERS_MAGCACHE_RATIOS)",
    )
    p_mag.add_argument("out", type=Path, help="the JSON file to write")
    p_mag.add_argument("--config", type=Path, default=None, help="a run config to start from")
    add_params(p_mag, "a parameter (YAML value): EDITOR, EDITOR_MODEL, EDIT_STEPS_MAX, DIFFUSERS_*")
    p_mag.add_argument(
        "--images", type=Path, default=None, help="a folder of source images (default: 4 made)"
    )
    p_mag.add_argument("--instruction", default="make it look like a watercolour painting")
    p_mag.add_argument("--n", type=int, default=4, help="calibration calls (one image each)")
    p_push = sub.add_parser("push", help="upload a run's dataset/ to the Hugging Face hub")
    p_push.add_argument("run_dir", help="a run folder or an object-store URL (s3://bucket/run)")
    p_push.add_argument("repo_id", help="the dataset repository, owner/name")
    p_push.add_argument("--public", action="store_true", help="make a new repository public")
    p_push.add_argument(
        "--no-webdataset", action="store_true", help="leave the WebDataset shards out"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            overrides = {k: parse_override(v) for k, v in args.param}
            config = RunConfig.load(args.config, overrides, args.run_dir)
            return run(config, progress=not args.no_progress)
        if args.command == "audit":
            return audit(args.run_dir)
        if args.command == "repair":
            from nhr.repair import repair

            if not open_files(args.run_dir).exists("tables"):
                raise RunFolderError(f"{args.run_dir} has no tables", "pass an nhr run folder")
            report = repair(args.run_dir, dry_run=args.dry_run)
            print("\n".join(report.lines()))
            return 0
        # --- branches of more subcommands ---
        if args.command == "export-for":
            from nhr.train.export_for import export_for

            n = export_for(args.format, args.run_dir, args.out)
            print(f"{n} triplets in {args.out} ({args.format}); see {args.out / 'README.md'}")
            return 0
        if args.command == "tiny-models":
            from nhr.backends.tiny_diffusers import write_tiny_models

            for name, path in write_tiny_models(args.folder, args.seed).items():
                print(f"{name}: {path}")
            return 0
        if args.command == "magcache-calibrate":
            from nhr.backends.diffusers_levers import calibrate_command

            overrides = {k: parse_override(v) for k, v in args.param}
            path = calibrate_command(
                args.out, args.config, overrides, args.images, args.instruction, args.n
            )
            print(f"MagCache ratios: {path} (set DIFFUSERS_MAGCACHE_RATIOS: {path})")
            return 0
        if args.command == "push":
            return push(args.run_dir, args.repo_id, not args.public, not args.no_webdataset)
        parser.error(f"unknown command {args.command}")
    except NhrError as err:
        print(f"nhr: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nhr: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
