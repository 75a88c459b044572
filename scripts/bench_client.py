"""Benchmark of the remote client layer against the fake Gemini server.

Prints hard-validator verdicts per second at concurrency 1, 8 and 64 with 250 ms of
server latency (goal: >= 100/s at 64), and whether a configured requests-per-minute cap
is held within 5 %. The fake server runs in its own process, as a real API would.

    .venv/bin/python scripts/bench_client.py [--latency 0.25] [--rpm 1200] [--rpm-requests 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from nhr.backends.api_client import ClientSettings, ModelReply, ModelRequest, RemoteClient
from nhr.backends.api_roles import RemoteJudge

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stamped:
    """A transport wrapper that records when each request is sent."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.sent: list[float] = []

    async def generate(self, request: ModelRequest, timeout: float) -> ModelReply:
        self.sent.append(time.monotonic())
        return await self.inner.generate(request, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


def judge(concurrency: int, rpm: float = 0.0) -> tuple[RemoteJudge, Stamped]:
    """A Gemini hard validator with the given limits and no cache."""
    from nhr.backends.gemini import GeminiTransport

    transport = Stamped(GeminiTransport(thinking_budget=0))
    settings = ClientSettings(concurrency=concurrency, rpm=rpm, timeout=30.0, attempts=3)
    client = RemoteClient(transport, settings, cache=None)
    return RemoteJudge(client, "gemini-2.5-flash", "validator", image_max_side=64), transport


def verdicts_per_second(concurrency: int, n: int, tag: str) -> float:
    """Score n distinct candidates in one call; verdicts per second."""
    j, _ = judge(concurrency)
    img = [Image.new("RGB", (64, 48), (i % 256, 40, 90)) for i in range(n)]
    texts = [f"{tag}: make cube {i} red" for i in range(n)]
    j.score(img[:1], img[:1], ["warm-up"])  # connection and client set up
    t0 = time.perf_counter()
    scores = j.score(img, img, texts)
    dt = time.perf_counter() - t0
    j.client.close()
    assert all(s.error is None for s in scores), [s.error for s in scores if s.error][:3]
    return n / dt


def rpm_held(rpm: float, n: int) -> tuple[float, float]:
    """(requests per minute over the run, most in any 10 s window per minute)."""
    j, stamped = judge(64, rpm)
    img = [Image.new("RGB", (32, 24), (i % 256, 0, 0)) for i in range(n)]
    j.score(img, img, [f"rpm: edit {i}" for i in range(n)])
    j.client.close()
    sent = sorted(stamped.sent)
    overall = 60.0 * (len(sent) - 1) / (sent[-1] - sent[0])
    window = 10.0
    most = max(sum(1 for t in sent if s <= t < s + window) for s in sent)
    return overall, most * 60.0 / window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.25)
    parser.add_argument("--rpm", type=float, default=1200.0)
    parser.add_argument("--rpm-requests", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/fakes/model_server.py"),
            "--port",
            str(port),
            "--latency",
            str(args.latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "listening on ..."
        os.environ["GEMINI_API_KEY"] = "bench-fake-key"
        os.environ["GOOGLE_GEMINI_BASE_URL"] = f"http://127.0.0.1:{port}"
        os.environ.pop("GOOGLE_API_KEY", None)
        tempfile.tempdir = tempfile.mkdtemp()
        print(f"fake Gemini server, {args.latency * 1000:.0f} ms latency per request")
        for conc, n in ((1, 16), (8, 96), (64, 640)):
            rate = verdicts_per_second(conc, n, f"c{conc}")
            print(f"  concurrency {conc:>3}: {rate:7.1f} verdicts/s  ({n} verdicts)")
        overall, peak = rpm_held(args.rpm, args.rpm_requests)
        ok = overall <= args.rpm * 1.05 and peak <= args.rpm * 1.05
        print(
            f"RPM cap {args.rpm:.0f}: {overall:.1f}/min over {args.rpm_requests} requests, "
            f"busiest 10 s window {peak:.1f}/min -> "
            f"{'held within 5 %' if ok else 'NOT held'} ({overall / args.rpm - 1:+.2%})"
        )
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
