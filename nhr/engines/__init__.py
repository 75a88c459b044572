"""Engines: what executes a chain of stages (in this process, or on a Ray cluster).

The runner owns the ledger, resume, stats and progress; an engine only computes. See
``nhr.engines.base`` for the contract between them.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nhr.config import PipelineConfig
    from nhr.engines.base import Engine
    from nhr.engines.ray import RaySettings


def ray_settings(cfg: PipelineConfig) -> RaySettings:
    """The Ray engine's settings from the config's ``engine`` block."""
    from nhr.engines.ray import RaySettings

    e = cfg.engine
    return RaySettings(
        address=e.ray_address,
        device_actors=e.ray_device_actors,
        gpus_per_actor=e.ray_gpus_per_actor,
        io_actors=e.ray_io_actors,
        cpu_tasks=e.ray_cpu_tasks,
        cpus_per_device_actor=e.ray_cpus_per_device_actor,
        cpus_per_io_actor=e.ray_cpus_per_io_actor,
        cpus_per_cpu_task=e.ray_cpus_per_cpu_task,
        window_rows=e.ray_window_rows,
        local_cpus=e.ray_local_cpus,
        driver_rows=e.ray_driver_rows,
    )


def engine_from_config(cfg: PipelineConfig, progress: bool = True) -> Engine | None:
    """The engine ``ENGINE`` names: None for ``local`` (the runner's default engine,
    sized by ``WORKERS``), a ``RayEngine`` for ``ray``. A missing Ray names what to
    install now; Ray itself is imported only once a chain goes to the cluster (seconds
    of a kernel's CPU that a notebook whose steps are done, or run on the driver,
    never spends)."""
    if cfg.engine.engine == "local":
        return None
    from nhr.engines.ray import RayEngine, require_ray

    require_ray()
    return RayEngine(ray_settings(cfg), progress, cfg.run.workers)


def run_cluster(cfg: PipelineConfig) -> contextlib.AbstractContextManager[str | None]:
    """What ``nhr run`` holds around its notebooks: with ``ENGINE ray`` and no cluster
    named (``RAY_ADDRESS`` empty, no such variable), one local Ray cluster that every
    notebook's kernel joins (``nhr.engines.ray.local_cluster``: started in the
    background, token-authenticated as Ray makes local clusters; the value is the file
    its address appears in); otherwise nothing (None): a named cluster is joined by each
    kernel, after one warning here if it accepts clients without a token
    (``nhr.engines.ray.warn_if_open``)."""
    e = cfg.engine
    if e.engine != "ray":
        return contextlib.nullcontext(None)
    from nhr.engines.ray import local_cluster, require_ray, warn_if_open

    require_ray()
    named = e.ray_address or os.environ.get("RAY_ADDRESS", "")
    if named:
        warn_if_open(named)
        return contextlib.nullcontext(None)
    return local_cluster(ray_settings(cfg))
