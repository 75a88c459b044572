"""Relative paths in notebooks mean the repository's, wherever the kernel started.

JupyterLab starts a notebook's kernel in the notebook's folder (``notebooks/``),
``nhr run`` starts it in the repository root, and ``jupyter nbconvert`` or papermill
wherever they are called. A parameter such as ``RUN_DIR = "results/scratch"`` must name
the same folder in all of them: the repository's ``results/scratch``, where ``nhr run``
and the CLI put it. ``work_from_repo_root`` makes the kernel work from the root, so every
relative path after it (parameters, and any a person types in a later cell) resolves
there.
"""

from __future__ import annotations

import os
from pathlib import Path

# what marks the root of an nhr checkout
MARKERS = ("pyproject.toml", "nhr/__init__.py", "notebooks")


def checkout_root(start: Path | str | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (the working folder) that is an nhr
    checkout, or None outside of one (an installed package used from elsewhere)."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / marker).exists() for marker in MARKERS):
            return folder
    return None


def work_from_repo_root() -> Path:
    """Make the repository root the working folder (nothing changes outside a
    checkout) and return the working folder."""
    root = checkout_root()
    if root is not None and Path.cwd().resolve() != root:
        os.chdir(root)
    return Path.cwd()
