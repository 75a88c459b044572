"""Benchmark the request cache: SQLite in a local folder vs one object per request key
(``ObjectRequestCache``) on a local folder and on an S3 API (moto's server on 127.0.0.1).

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_cache.py --entries 2000

For each store it times ``put`` of N replies, ``get`` of N hits from a fresh cache
instance (another node: every hit read from the store), the same from 16 threads, ``get``
of the same N hits again (the in-memory layer), and ``get`` of N misses; prints one JSON
object with ops/s of each and the ratios against SQLite. moto's server runs on the same
cores as the benchmark, so its S3 figures are a floor for latency-bound work, not a
prediction for real S3 (where each round trip is ~10–50 ms, and concurrent requests overlap).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nhr.backends.api_client import ModelReply, ObjectRequestCache, RequestCache
from nhr.store.files import LocalFiles, ObjectFiles


def _keys(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def measure(make: Any, n: int) -> dict[str, float]:
    """ops/s of put, cold hits (a new instance), warm hits and misses."""
    reply = ModelReply('{"adherence": 5, "aesthetic": 4}', "STOP", 1200, 40)
    keys, missing = _keys(n, "hit"), _keys(n, "miss")
    cache = make()
    t0 = time.perf_counter()
    for k in keys:
        cache.put(k, "model", reply)
    put = time.perf_counter() - t0
    cache.close()
    cache = make()
    t0 = time.perf_counter()
    assert all(cache.get(k) is not None for k in keys)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert all(cache.get(k) is not None for k in keys)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert all(cache.get(k) is None for k in missing)
    miss = time.perf_counter() - t0
    cache.close()
    cache = make()  # cold hits again, from 16 threads (the client looks up off its loop)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        assert all(r is not None for r in pool.map(cache.get, keys))
    threaded = time.perf_counter() - t0
    cache.close()
    return {
        "puts_per_s": _rate(n, put),
        "hits_per_s": _rate(n, cold),
        "hits_per_s_16_threads": _rate(n, threaded),
        "hits_per_s_repeated": _rate(n, warm),
        "misses_per_s": _rate(n, miss),
    }


def moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server on a free port; (process, endpoint URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)


def main() -> None:
    """Run the benchmark and print its JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=2000, help="replies put and read")
    ap.add_argument("--no-s3", action="store_true", help="skip the moto S3 measurement")
    args = ap.parse_args()
    n = args.entries
    out: dict[str, Any] = {"benchmark": "request cache", "entries": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out["sqlite_local"] = measure(lambda: RequestCache(root / "api_cache.sqlite"), n)
        out["objects_local"] = measure(
            lambda: ObjectRequestCache(LocalFiles(root / "objects" / "cache")), n
        )
    if not args.no_s3:
        import pyarrow.fs as pafs

        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
        proc, endpoint = moto_server()
        try:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            host = endpoint.split("://", 1)[1]
            pafs.S3FileSystem(
                endpoint_override=host, scheme="http", allow_bucket_creation=True
            ).create_dir("bench")
            n_s3 = min(n, 500)
            out["objects_s3_moto"] = {
                "entries": n_s3,
                **measure(lambda: ObjectRequestCache(ObjectFiles("s3://bench/run/cache")), n_s3),
            }
        finally:
            proc.kill()
            proc.wait()
    base = out["sqlite_local"]
    out["ratio_vs_sqlite"] = {
        name: {k: round(v / base[k], 3) for k, v in out[name].items() if k in base}
        for name in ("objects_local", "objects_s3_moto")
        if name in out
    }
    out["load"] = list(os.getloadavg())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
