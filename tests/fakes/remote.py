"""Helpers for tests of the remote model backends against the fake server."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fakes.model_server import FakeModelServer
from nhr.backends.api_client import RemoteClient
from nhr.backends.registry import Backends, build_backends
from nhr.config import PipelineConfig

KEY = "AIzaFAKE-secret-key-0123456789"
ROLES = ("prompter", "gate_judge", "prefilter_judge", "validator", "inverter")
FAST = {
    # the fake answers in milliseconds; a busy machine (two test workers and their
    # kernels) must not turn answers into timeouts and retries: tests of timeouts set
    # their own, below the fake's slow_seconds
    "API_TIMEOUT_SECONDS": 5.0,
    "API_ATTEMPTS": 3,
    "API_BACKOFF_SECONDS": 0.01,
    "API_BACKOFF_MAX_SECONDS": 1.0,
    "API_CONTENT_RETRIES": 0,
    "API_CONCURRENCY": 16,
}


def use_fake(monkeypatch: pytest.MonkeyPatch, srv: FakeModelServer) -> None:
    """Point google-genai at the fake, with a test key; hide any real credentials."""
    for var in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", srv.url)


def remote_config(srv: FakeModelServer, backend: str = "gemini", **params: Any) -> PipelineConfig:
    """A config with every remote role on ``backend``, fast retries, against the fake."""
    values = {r.upper(): backend for r in ROLES}
    values.update(FAST, OPENAI_BASE_URL=srv.openai_url)
    values.update({k.upper(): v for k, v in params.items()})
    return PipelineConfig.from_params(values)


@contextmanager
def remote_backends(cfg: PipelineConfig, run_dir: Path) -> Any:
    """The backends of a config; their clients are closed afterwards."""
    backends = build_backends(cfg, run_dir)
    try:
        yield backends
    finally:
        close_clients(backends)


def close_clients(backends: Backends) -> None:
    """Close every remote client a build made."""
    for obj in backends.ctx._shared.values():
        if isinstance(obj, RemoteClient):
            obj.close()


def images(n: int, size: tuple[int, int] = (32, 24)) -> list[Image.Image]:
    """n distinct tiny images."""
    return [Image.new("RGB", size, (i * 7 % 256, i * 13 % 256, 90)) for i in range(n)]
