"""User-facing errors: each names the thing that is wrong and what to do about it."""

from __future__ import annotations

from typing import Any


class NhrError(Exception):
    """An error a user can fix; ``str(err)`` is one line naming the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as (problem, fix), so the error crosses from a worker process intact."""
        return type(self), (self.problem, self.fix), self.__dict__

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in a notebook instead of the traceback: the one line."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(NhrError):
    """A config file, key or value is wrong."""


class RunFolderError(NhrError):
    """A run folder is in use, was made with other settings, or is damaged."""


class ImageError(NhrError):
    """An image cannot be read, or is too large to be trusted."""


class BackendError(NhrError):
    """A backend is unknown, missing an optional dependency, or failed."""


class DistrustedOutputs(NhrError):
    """Raised by a chain's observer on a batch of one link: the run stops, and that
    link's outputs not yet committed are dropped rather than committed (their inputs,
    and the upstream batches that fed them, are computed again by the rerun)."""


def missing_extra(module: str, extra: str) -> BackendError:
    """The error for an optional dependency that is not installed."""
    return BackendError(
        f"the optional dependency '{module}' is not installed",
        f"install it with `pip install -e '.[{extra}]'`",
    )
