"""An S3 API on 127.0.0.1 for tests: moto's server on a free port, one bucket, and the
AWS environment pointed at it (``nhr.store`` and every process started meanwhile, Ray
nodes included, reach it through ``AWS_ENDPOINT_URL`` and the credentials)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BUCKET = "nhr-test"
SECRET = "moto-secret-never-pickled"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port of 127.0.0.1 free just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url(name: str) -> str:
    """A fresh run folder URL in the bucket."""
    return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:6]}"


@contextmanager
def moto_s3(start_seconds: float = 30.0) -> Iterator[Any]:
    """Run moto's S3 server with ``BUCKET`` in it; yields a ``pyarrow.fs.S3FileSystem``
    on it. The AWS environment points at it meanwhile (restored after, the server
    killed)."""
    import pyarrow.fs as pafs

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        yield fs
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
