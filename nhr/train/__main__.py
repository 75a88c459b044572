"""``python -m nhr.train RUN_DIR [-p KEY VALUE ...]``: train with the run folder's saved
config (overrides are reconciled into it first); under ``accelerate launch`` every
process runs this, data parallel."""

from __future__ import annotations

import argparse
import sys

from nhr.config import parse_override, reconcile
from nhr.errors import NhrError
from nhr.train.loop import train


def main(argv: list[str] | None = None) -> int:
    """Train or resume; prints the LoRA folder."""
    parser = argparse.ArgumentParser(prog="python -m nhr.train")
    parser.add_argument("run_dir")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from accelerate import PartialState

        with PartialState().main_process_first():  # one process writes config.yaml
            cfg = reconcile(args.run_dir, {k.upper(): parse_override(v) for k, v in args.param})
        result = train(cfg, args.run_dir, progress=not args.no_progress)
    except NhrError as err:
        print(f"nhr: {err}", file=sys.stderr)
        return 2
    print(result.lora)
    return 0


if __name__ == "__main__":
    sys.exit(main())
