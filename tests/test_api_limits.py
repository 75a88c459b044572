"""The client layer's limits: bounded concurrency, requests and tokens per minute."""

import asyncio
import time

from nhr.backends.api_client import ClientSettings, ModelReply, ModelRequest, RemoteClient


class Dummy:
    """An in-memory transport: counts requests in flight, answers after ``delay``."""

    name = "dummy"

    def __init__(self, delay=0.0, tokens=10):
        self.delay, self.tokens = delay, tokens
        self.in_flight = self.most = 0
        self.sent = []

    async def generate(self, request, timeout):
        self.sent.append(time.monotonic())
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(self.delay)
        self.in_flight -= 1
        return ModelReply('{"ok": 1}', "STOP", self.tokens, 0)

    async def aclose(self):
        pass


def _ask(transport, n, **settings):
    client = RemoteClient(transport, ClientSettings(**settings))
    reqs = [ModelRequest("m", "v1", "s", (f"q{i}",), {}) for i in range(n)]
    t0 = time.monotonic()
    out = client.ask_many(reqs, lambda v: v)
    client.close()
    assert out == [{"ok": 1}] * n
    return time.monotonic() - t0


def test_concurrency_is_bounded():
    t = Dummy(delay=0.02)
    _ask(t, 40, concurrency=4)
    assert t.most == 4


def test_requests_per_minute_held_within_5_percent():
    t = Dummy()
    _ask(t, 60, concurrency=64, rpm=3000)  # 50 a second
    rate = 60 * (len(t.sent) - 1) / (t.sent[-1] - t.sent[0])
    assert abs(rate / 3000 - 1) < 0.05, rate


def test_tokens_per_minute_use_the_reported_usage():
    t = Dummy(tokens=500)
    client = RemoteClient(t, ClientSettings(concurrency=64, tpm=60_000))  # 1k tokens a second
    reqs = [ModelRequest("m", "v1", "s", (f"q{i}",), {}) for i in range(8)]
    t0 = time.monotonic()
    client.ask_many(reqs, lambda v: v)  # 8 × ~256 estimated tokens, 1k may burst
    first = time.monotonic() - t0
    client.ask_many([ModelRequest("m", "v1", "s", ("next",), {})], lambda v: v)
    second = time.monotonic() - t0 - first
    client.close()
    assert 0.9 < first < 3.0, first
    # the replies reported 500 tokens each, not 256: the debt delays the next request
    assert second > 0.9, second
