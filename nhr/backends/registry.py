"""Builds the backends a config names. Backends are looked up in registries (a dict per
role), so adding one is adding an entry, and an unknown name is refused with the list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.backends.base import Editor, Judge, PromptWriter, TextToImage
from nhr.config import PipelineConfig
from nhr.errors import BackendError


@dataclass
class Backends:
    """The backends of a run; ``truth`` is set only for worlds that know the truth."""

    prompter: PromptWriter
    t2i: TextToImage
    gate_judge: Judge
    editor: Editor
    prefilter_judge: Judge
    validator: Judge
    truth: Any | None


def _synthetic_world(cfg: PipelineConfig, run_dir: Path) -> Any:
    """The embedded synthetic world, with its truth folder inside the run."""
    from nhr.backends.synthetic import SyntheticWorld

    return SyntheticWorld(truth_dir=Path(run_dir) / "truth", seed=cfg.seed)


WORLDS: dict[str, Callable[[PipelineConfig, Path], Any]] = {"synthetic": _synthetic_world}
ROLES = {
    "prompter": "prompter",
    "t2i": "renderer",
    "gate_judge": "judge",
    "editor": "editor",
    "prefilter_judge": "judge",
    "validator": "judge",
}


def build_backends(cfg: PipelineConfig, run_dir: Path) -> Backends:
    """Instantiate each role's backend from the config (worlds are built once, shared)."""
    worlds: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    for role, attr in ROLES.items():
        name = getattr(cfg, role)
        if name not in WORLDS:
            raise BackendError(
                f"unknown backend {name!r} for {role.upper()}",
                f"use one of: {', '.join(WORLDS)}",
            )
        if name not in worlds:
            worlds[name] = WORLDS[name](cfg, run_dir)
        parts[role] = getattr(worlds[name], attr)
    truth = worlds["synthetic"].truth if "synthetic" in worlds else None
    return Backends(**parts, truth=truth)
