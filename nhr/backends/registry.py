"""Builds the backends a config names, from one registry per role.

Each role (``prompter``, ``t2i``, ``gate_judge``, ``editor``, ``prefilter_judge``,
``validator``, ``inverter``) maps backend names to factories. A factory takes the build
context and returns an object implementing the role's protocol (``nhr.backends.base``);
heavy dependencies are imported inside the factory, so an unused backend costs nothing
and a missing one fails with the extra to install. Adding a backend is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhr.config import PipelineConfig
from nhr.errors import BackendError


@dataclass
class BuildContext:
    """What a factory gets: the config, the run folder, and a memo for shared objects
    (one synthetic world, one API client) across roles."""

    cfg: PipelineConfig
    run_dir: Path
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """The object called ``name``, made once per build."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]


Factory = Callable[[BuildContext], Any]


def _world(ctx: BuildContext) -> Any:
    """The embedded synthetic world, with its truth folder inside the run."""
    from nhr.backends.synthetic import SyntheticWorld

    return ctx.shared(
        "synthetic-world",
        lambda: SyntheticWorld(truth_dir=Path(ctx.run_dir) / "truth", seed=ctx.cfg.seed),
    )


REGISTRY: dict[str, dict[str, Factory]] = {
    "prompter": {"synthetic": lambda ctx: _world(ctx).prompter},
    "t2i": {"synthetic": lambda ctx: _world(ctx).renderer},
    "gate_judge": {"synthetic": lambda ctx: _world(ctx).judge},
    "editor": {"synthetic": lambda ctx: _world(ctx).editor},
    "prefilter_judge": {"synthetic": lambda ctx: _world(ctx).judge},
    "validator": {"synthetic": lambda ctx: _world(ctx).judge},
    "inverter": {"synthetic": lambda ctx: _world(ctx).inverter},
}

# --- diffusers backends (issue 4): register factories here ---
# --- end diffusers backends ---

# --- remote model APIs (issue 5): register factories here ---
# --- end remote model APIs ---


def known(role: str) -> tuple[str, ...]:
    """Backend names registered for a role."""
    return tuple(REGISTRY[role])


@dataclass
class Backends:
    """The backends of a run; ``truth`` is set only when a synthetic world is in use."""

    ctx: BuildContext
    _built: dict[str, Any] = field(default_factory=dict)

    def get(self, role: str) -> Any:
        """The backend of a role, built on first use."""
        if role not in self._built:
            name = getattr(self.ctx.cfg, role)
            factories = REGISTRY[role]
            if name not in factories:
                raise BackendError(
                    f"unknown backend {name!r} for {role.upper()}",
                    f"use one of: {', '.join(factories)}",
                )
            self._built[role] = factories[name](self.ctx)
        return self._built[role]

    def __getattr__(self, role: str) -> Any:
        if role in REGISTRY:
            return self.get(role)
        raise AttributeError(role)

    @property
    def truth(self) -> Any | None:
        """The synthetic world's truth when any role uses the synthetic world, else None."""
        uses_world = any(getattr(self.ctx.cfg, role) == "synthetic" for role in REGISTRY)
        return _world(self.ctx).truth if uses_world else None


def build_backends(cfg: PipelineConfig, run_dir: Path) -> Backends:
    """The backends of a config; each is built when a stage first asks for it."""
    return Backends(BuildContext(cfg, Path(run_dir)))
