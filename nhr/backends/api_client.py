"""One client layer for every remote model call (Gemini, OpenAI-compatible endpoints).

A ``RemoteClient`` owns an event loop on its own thread, so synchronous callers (the
runner's worker threads, a Jupyter kernel that already runs a loop) submit coroutines to
it and block on the result. Every request goes through the same path:

1. the request cache (keyed by a hash of the canonical request: model, prompt
   version, system text, user text, image hashes, schema, decoding settings) — a rerun
   answers from the cache and makes no call. On a local folder it is one SQLite file;
   on an object store (a run folder every node sees) one object per request key, written
   once and read by any node, behind an in-memory layer (``ObjectRequestCache``);
2. bounded concurrency (a semaphore), then the requests-per-minute and tokens-per-minute
   buckets;
3. the transport call under a per-request timeout, retried by tenacity with exponential
   backoff that honours ``Retry-After`` on 408/429/5xx, timeouts and dropped connections;
4. the reply checked (finish reason, empty, JSON) and parsed by the caller's parser;
   content failures are re-asked ``content_retries`` times, then become a ``CallError``
   whose text is ``"kind: detail"`` (the runner counts errors by kind).

Only answers that parsed are cached, so a transient failure is asked again next time,
while an answered request is never paid for twice. API keys never enter a request key,
an error text or the cache (``redact`` scrubs them from error details).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nhr.errors import BackendError, ConfigError

T = TypeVar("T")

#: HTTP statuses worth retrying (the API's own advice; 408 timeout, 429 quota, 5xx).
RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses that mean the configuration is wrong (key, permission, model id): stop the run.
FATAL_STATUS = frozenset({401, 403, 404})
#: Error kinds that a fresh call may fix (the model may answer differently next time).
CONTENT_KINDS = frozenset(
    {
        "malformed_json",
        "schema_violation",
        "out_of_range",
        "banned_word",
        "blocked",
        "bad_finish",
        "empty_response",
    }
)
#: Environment variables that may hold secrets; their values are scrubbed from errors.
SECRET_ENV = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY")


class CallError(Exception):
    """A request that produced no usable answer; ``str()`` is ``"kind: detail"``."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = redact(detail)[:300]
        super().__init__(f"{kind}: {self.detail}")


class TransientError(Exception):
    """A failure a retry may fix: a retriable status, a timeout or a dropped connection.

    ``retry_after`` is the server's advice in seconds (None when it gave none)."""

    def __init__(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        self.kind = kind
        self.detail = redact(detail)[:300]
        self.retry_after = retry_after
        super().__init__(f"{kind}: {self.detail}")


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with the values of secret environment variables replaced by ``***``."""
    for secret in [*(os.environ.get(k, "") for k in SECRET_ENV), *extra]:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return text


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- requests and replies
@dataclass(frozen=True)
class ImagePart:
    """An image as sent: PNG bytes and their sha256 (the cache key uses the hash)."""

    data: bytes
    sha256: str

    @classmethod
    def from_png(cls, data: bytes) -> ImagePart:
        """Wrap PNG bytes."""
        return cls(data, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class ModelRequest:
    """One request: system instructions, then the user's parts (text and images in order),
    answered as JSON matching ``schema``, or as free text when ``free_text`` (judges
    trained to write their own format, parsed by the caller)."""

    model: str
    prompt_version: str
    system: str
    parts: tuple[str | ImagePart, ...]
    schema: dict[str, Any]
    temperature: float = 0.0
    max_output_tokens: int = 1024
    free_text: bool = False

    def canonical(self) -> dict[str, Any]:
        """The request as plain data, images by hash: what the cache key hashes."""
        extra = {"free_text": True} if self.free_text else {}
        return {
            **extra,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "system": self.system,
            "parts": [
                {"image": p.sha256} if isinstance(p, ImagePart) else {"text": p} for p in self.parts
            ],
            "schema": self.schema,
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
        }

    def key(self) -> str:
        """sha256 of the canonical request."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def estimated_tokens(self) -> int:
        """A rough input+output token estimate for the tokens-per-minute bucket (≈4 chars a
        token, 258 a small image, 1,032 a large one), corrected once the reply's usage
        is known."""
        chars = len(self.system) + sum(len(p) for p in self.parts if isinstance(p, str))
        images = sum(
            258 if len(p.data) < 200_000 else 1032 for p in self.parts if isinstance(p, ImagePart)
        )
        return chars // 4 + images + min(self.max_output_tokens, 256)


@dataclass(frozen=True)
class ModelReply:
    """A transport's answer: the text, the finish reason normalised to Gemini's names
    (``STOP``, ``SAFETY``, ``MAX_TOKENS``, ``EMPTY``, ``BLOCKED:<reason>`` ...), tokens."""

    text: str
    finish: str
    tokens_in: int = 0
    tokens_out: int = 0


class Transport(Protocol):
    """A remote model API: one async call per request; raises ``TransientError`` for
    retriable failures, ``CallError`` for a final one, ``BackendError`` for bad config."""

    name: str

    async def generate(self, request: ModelRequest, timeout: float) -> ModelReply: ...

    async def aclose(self) -> None: ...


def check_reply(reply: ModelReply, free_text: bool = False) -> Any:
    """The JSON value of a reply (its stripped text when ``free_text``), or a
    ``CallError`` naming why there is none."""
    finish = reply.finish.upper()
    if finish.startswith("BLOCKED") or finish in {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "CONTENT_FILTER",
    }:
        raise CallError("blocked", f"finish reason {reply.finish}")
    if finish == "EMPTY" or not reply.text.strip():
        raise CallError("empty_response", f"no text (finish reason {reply.finish})")
    if finish != "STOP":
        raise CallError("bad_finish", f"finish reason {reply.finish}")
    text = reply.text.strip()
    if free_text:
        return text
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CallError("malformed_json", f"{err.msg} at {err.pos} in {text[:80]!r}") from None


# ---------------------------------------------------------------- rate limits
class RateBucket:
    """A rate limit as a schedule (GCRA): ``per_minute`` units a minute, at most ``burst``
    at once. Each caller reserves its slot on an absolute timeline before it sleeps, so
    sleep overshoot never accumulates and callers go in the order they asked; a request
    larger than the burst leaves the schedule in debt, so the long-run rate holds."""

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, burst if burst is not None else self.rate)
        self.tat = 0.0  # theoretical arrival time of the next unit

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` units may be spent, then spend them."""
        now = time.monotonic()
        self.tat = max(self.tat, now) + amount / self.rate
        go = self.tat - self.burst / self.rate
        if go > now:
            await asyncio.sleep(go - now)

    def adjust(self, amount: float) -> None:
        """Spend (or give back, if negative) ``amount`` after the fact."""
        self.tat += amount / self.rate


# ---------------------------------------------------------------- cache
class RequestCache:
    """SQLite store of answered requests (by request key) and of submitted batch jobs.

    One file serves every process of a run in turn (WAL mode, a writer lock inside
    SQLite); access from this process is serialised by a lock. SQLite needs a local
    disk (its locks do not work on object storage, nor reliably on network mounts); a
    run folder on an object store gets an ``ObjectRequestCache``."""

    blocking = False  # a lookup is a local read: fine on the event loop

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT,"
                " text TEXT, finish TEXT, tokens_in INTEGER, tokens_out INTEGER, created REAL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS batch_jobs (batch_key TEXT PRIMARY KEY,"
                " job_name TEXT, model TEXT, request_keys TEXT, state TEXT, created REAL)"
            )

    def get(self, key: str) -> ModelReply | None:
        """The cached reply of a request, or None."""
        if not self.enabled:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish, tokens_in, tokens_out FROM replies WHERE key = ?", (key,)
            ).fetchone()
        return ModelReply(*row) if row else None

    def put(self, key: str, model: str, reply: ModelReply) -> None:
        """Store a reply that parsed."""
        if not self.enabled:
            return
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    reply.text,
                    reply.finish,
                    reply.tokens_in,
                    reply.tokens_out,
                    time.time(),
                ),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def job(self, batch_key: str) -> tuple[str, str] | None:
        """(job name, state) of a submitted batch job, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT job_name, state FROM batch_jobs WHERE batch_key = ?", (batch_key,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def put_job(
        self, batch_key: str, job_name: str, model: str, keys: list[str], state: str
    ) -> None:
        """Record a submitted (or finished) batch job, before anything waits on it."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO batch_jobs VALUES (?, ?, ?, ?, ?, ?)",
                (batch_key, job_name, model, json.dumps(keys), state, time.time()),
            )

    def drop_job(self, batch_key: str) -> None:
        """Forget a batch job (it failed; the next pass submits afresh)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM batch_jobs WHERE batch_key = ?", (batch_key,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as (path, enabled): a copy in another process opens the same file."""
        return type(self), (self.path, self.enabled)


class ObjectRequestCache:
    """Answered requests and batch jobs as objects under a folder every node sees.

    A reply is ``replies/<k[:2]>/<key>.json``: named by its request key, written once
    with one PUT (atomic on an object store; two nodes racing on one key write the same
    answer's equal, and either is right), read by any node. Nothing is shared but the
    objects, so there is no lock and no database file to corrupt, and nodes never wait
    for one another. An in-memory layer in front keeps every reply this process has
    read or written (replies never change), so a repeated request costs no round trip;
    misses are not remembered, since another node may answer them next. A batch job is
    ``jobs/<batch_key>.json``, rewritten as its state changes (one driver owns a batch).
    ``blocking``: a lookup is a network round trip, so the client runs it off its loop."""

    blocking = True

    def __init__(self, files: Any, enabled: bool = True, memory_entries: int = 200_000) -> None:
        self.files = files
        self.enabled = enabled
        self.memory_entries = memory_entries
        self._memory: dict[str, ModelReply] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _rel(key: str) -> str:
        return f"replies/{key[:2]}/{key}.json"

    def _remember(self, key: str, reply: ModelReply) -> None:
        with self._lock:
            if len(self._memory) >= self.memory_entries:
                self._memory.pop(next(iter(self._memory)))
            self._memory[key] = reply

    def get(self, key: str) -> ModelReply | None:
        """The cached reply of a request, or None."""
        if not self.enabled:
            return None
        with self._lock:
            hit = self._memory.get(key)
        if hit is not None:
            return hit
        try:
            data = json.loads(self.files.read_bytes(self._rel(key)))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a damaged entry is a miss; the answer is written again
        reply = ModelReply(data["text"], data["finish"], data["tokens_in"], data["tokens_out"])
        self._remember(key, reply)
        return reply

    def put(self, key: str, model: str, reply: ModelReply) -> None:
        """Store a reply that parsed."""
        if not self.enabled:
            return
        body = {
            "key": key,
            "model": model,
            "text": reply.text,
            "finish": reply.finish,
            "tokens_in": reply.tokens_in,
            "tokens_out": reply.tokens_out,
            "created": time.time(),
        }
        self.files.write_bytes(self._rel(key), json.dumps(body).encode())
        self._remember(key, reply)

    def __len__(self) -> int:
        return len(self.files.walk("replies"))

    def job(self, batch_key: str) -> tuple[str, str] | None:
        """(job name, state) of a submitted batch job, or None."""
        try:
            data = json.loads(self.files.read_bytes(f"jobs/{batch_key}.json"))
        except FileNotFoundError:
            return None
        return (data["job_name"], data["state"])

    def put_job(
        self, batch_key: str, job_name: str, model: str, keys: list[str], state: str
    ) -> None:
        """Record a submitted (or finished) batch job, before anything waits on it."""
        body = {"job_name": job_name, "model": model, "request_keys": keys, "state": state}
        self.files.write_bytes(f"jobs/{batch_key}.json", json.dumps(body).encode())

    def drop_job(self, batch_key: str) -> None:
        """Forget a batch job (it failed; the next pass submits afresh)."""
        self.files.delete(f"jobs/{batch_key}.json")

    def close(self) -> None:
        """Nothing to close (the objects are written as they come)."""


CACHE_FILE = "api_cache.sqlite"  # the SQLite cache's file in a local folder
CACHE_FOLDER = "cache"  # the object cache's folder in a run folder on an object store


def open_request_cache(
    folder: Path | str, enabled: bool = True
) -> RequestCache | ObjectRequestCache:
    """The request cache of a folder (``API_CACHE_DIR``, else the run folder): SQLite
    ``api_cache.sqlite`` on a local path, objects under ``cache/`` on an object store."""
    from nhr.store.files import location, open_files

    where = location(folder)
    if isinstance(where, Path):
        return RequestCache(where / CACHE_FILE, enabled=enabled)
    return ObjectRequestCache(open_files(where).child(CACHE_FOLDER), enabled=enabled)


# ---------------------------------------------------------------- prices and usage
@dataclass(frozen=True)
class PriceTable:
    """USD per million input and output tokens, by model id; batch calls get a discount."""

    prices: dict[str, tuple[float, float]]
    batch_discount: float = 0.5

    @classmethod
    def parse(cls, entries: Iterable[str], batch_discount: float = 0.5) -> PriceTable:
        """Entries ``"model=in/out"`` (USD per 1M tokens), e.g. ``gemini-2.5-flash=0.30/2.50``."""
        prices = {}
        for entry in entries:
            try:
                model, rest = entry.split("=", 1)
                p_in, p_out = (float(x) for x in rest.split("/", 1))
            except ValueError:
                raise ConfigError(
                    f"API_PRICES entry {entry!r} is not model=in/out",
                    "write e.g. 'gemini-2.5-flash=0.30/2.50' (USD per million tokens)",
                ) from None
            prices[model.strip()] = (p_in, p_out)
        return cls(prices, batch_discount)

    def cost(
        self, model: str, tokens_in: int, tokens_out: int, batch: bool = False
    ) -> float | None:
        """Cost of a call in USD, or None for a model without a price (a tuned endpoint
        is priced by the longest table entry its id ends with)."""
        name = model.removeprefix("models/")
        price = self.prices.get(name)
        if price is None:
            hits = [m for m in self.prices if name.endswith(m) or name.endswith(f"/{m}")]
            price = self.prices[max(hits, key=len)] if hits else None
        if price is None:
            return None
        usd = (tokens_in * price[0] + tokens_out * price[1]) / 1e6
        return usd * (self.batch_discount if batch else 1.0)


@dataclass
class Usage:
    """Cumulative counters of one backend object (``ReportsUsage``)."""

    counts: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("calls", "tokens_in", "tokens_out", "cost_usd", "cache_hits", "errors", "retries"),
            0.0,
        )
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **amounts: float) -> None:
        """Add to the counters."""
        with self._lock:
            for k, v in amounts.items():
                self.counts[k] = self.counts.get(k, 0.0) + v

    def snapshot(self) -> dict[str, float]:
        """A copy of the counters."""
        with self._lock:
            return dict(self.counts)

    def __getstate__(self) -> dict[str, Any]:
        return {"counts": self.snapshot()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.counts, self._lock = dict(state["counts"]), threading.Lock()


# ---------------------------------------------------------------- the client
@dataclass(frozen=True)
class ClientSettings:
    """Knobs of the client layer (from the config's ``API_*`` fields)."""

    concurrency: int = 16
    rpm: float = 0.0
    tpm: float = 0.0
    timeout: float = 60.0
    attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    content_retries: int = 1


class RetryAfterWait:
    """tenacity wait: the server's ``Retry-After`` when it gave one (capped), else
    exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        from tenacity import wait_exponential_jitter

        self.maximum = maximum
        self.fallback = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)

    def __call__(self, retry_state: Any) -> float:
        err = retry_state.outcome.exception() if retry_state.outcome else None
        after = getattr(err, "retry_after", None)
        if after is not None:
            return min(float(after), self.maximum)
        return float(self.fallback(retry_state))


class RemoteClient:
    """Bounded, rate-limited, retried, cached calls to one transport, from any thread."""

    def __init__(
        self,
        transport: Transport,
        settings: ClientSettings,
        cache: RequestCache | ObjectRequestCache | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.cache = cache
        self.prices = prices or PriceTable({})
        self.usage = Usage()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._sem: asyncio.Semaphore | None = None
        # requests are paced one at a time (burst 1), so no window of any length sees more
        # than the cap plus one request; tokens may burst a second's worth
        self._rpm = RateBucket(settings.rpm, burst=1.0) if settings.rpm > 0 else None
        self._tpm = RateBucket(settings.tpm) if settings.tpm > 0 else None

    def share_limits(self, fraction: float) -> None:
        """Keep ``fraction`` of the concurrency and rate limits: one of several copies of
        this client (one per Ray actor) that share the configured caps. Call it before
        the first request."""
        s = self.settings
        self.settings = replace(
            s,
            concurrency=max(1, math.ceil(s.concurrency * fraction)),
            rpm=s.rpm * fraction,
            tpm=s.tpm * fraction,
        )
        self._rpm = RateBucket(self.settings.rpm, burst=1.0) if self.settings.rpm > 0 else None
        self._tpm = RateBucket(self.settings.tpm) if self.settings.tpm > 0 else None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the loop thread (a copy starts its own on first use)."""
        state = dict(self.__dict__)
        for name in ("_loop", "_thread", "_sem"):
            state[name] = None
        del state["_start_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_lock = threading.Lock()

    # ---- the loop thread ------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    self._sem = asyncio.Semaphore(self.settings.concurrency)
                    ready.set()
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name="nhr-api-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop and wait for it (safe from any thread,
        including one whose own loop is running, as in a Jupyter kernel)."""
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def map(self, calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run many calls concurrently (bounded by the semaphore); results in order."""

        async def gather() -> list[T]:
            return list(await asyncio.gather(*(c() for c in calls)))

        return self.run(gather())

    def close(self) -> None:
        """Close the transport and stop the loop thread."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            self.run(self.transport.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            if self.cache is not None:
                self.cache.close()

    # ---- one request ----------------------------------------------------------------
    async def ask(
        self, request: ModelRequest, parse: Callable[[Any], T], usage: Usage | None = None
    ) -> T:
        """The parsed answer to a request: from the cache, else from the model (retried);
        raises ``CallError`` when there is none."""
        counters = [self.usage, *([usage] if usage is not None else [])]
        key = request.key()
        cached = await self._cached(key)
        if cached is not None:
            try:
                value = parse(check_reply(cached, request.free_text))
            except CallError:
                pass  # an old entry the current parser refuses: ask again
            else:
                for u in counters:
                    u.add(cache_hits=1)
                return value
        last: CallError | None = None
        for _ in range(1 + self.settings.content_retries):
            try:
                reply = await self._send(request, counters)
                value = parse(check_reply(reply, request.free_text))
            except CallError as err:
                last = err
                if err.kind not in CONTENT_KINDS:
                    break
                continue
            if self.cache is not None:
                if self.cache.blocking:
                    await asyncio.to_thread(self.cache.put, key, request.model, reply)
                else:
                    self.cache.put(key, request.model, reply)
            return value
        for u in counters:
            u.add(errors=1)
        assert last is not None
        raise last

    async def _cached(self, key: str) -> ModelReply | None:
        """The cache's reply to a request key (a network lookup runs off the loop, so
        concurrent requests do not queue behind it)."""
        if self.cache is None:
            return None
        if self.cache.blocking:
            return await asyncio.to_thread(self.cache.get, key)
        return self.cache.get(key)

    def account(
        self, model: str, reply: ModelReply, counters: list[Usage], batch: bool = False
    ) -> None:
        """Add a reply's tokens and cost to the counters."""
        cost = self.prices.cost(model, reply.tokens_in, reply.tokens_out, batch)
        for u in counters:
            u.add(
                tokens_in=reply.tokens_in,
                tokens_out=reply.tokens_out,
                cost_usd=cost or 0.0,
                **({"unpriced_calls": 1} if cost is None else {}),
            )

    async def _send(self, request: ModelRequest, counters: list[Usage]) -> ModelReply:
        """One transport call with limits, timeout and retries (tenacity)."""
        s = self.settings
        estimate = request.estimated_tokens()
        try:
            async for attempt in retrying(s):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        for u in counters:
                            u.add(retries=1)
                    reply = await self._attempt(request, estimate, counters)
        except TransientError as err:
            kind = "timeout" if err.kind == "timeout" else "retries_exhausted"
            raise CallError(kind, f"{err} (after {s.attempts} attempts)") from None
        self.account(request.model, reply, counters)
        return reply

    async def _attempt(
        self, request: ModelRequest, estimate: int, counters: list[Usage]
    ) -> ModelReply:
        """One HTTP request, inside the concurrency bound and the rate limits."""
        assert self._sem is not None
        async with self._sem:
            if self._rpm is not None:
                await self._rpm.acquire(1)
            if self._tpm is not None:
                await self._tpm.acquire(estimate)
            for u in counters:
                u.add(calls=1)
            try:
                reply = await asyncio.wait_for(
                    self.transport.generate(request, self.settings.timeout),
                    self.settings.timeout,
                )
            except TimeoutError:
                raise TransientError(
                    "timeout", f"no answer within {self.settings.timeout:g} s"
                ) from None
        if self._tpm is not None:
            self._tpm.adjust(reply.tokens_in + reply.tokens_out - estimate)
        return reply

    def ask_many(
        self,
        requests: list[ModelRequest],
        parse: Callable[[Any], T] | list[Callable[[Any], T]],
        usage: Usage | None = None,
    ) -> list[T | CallError]:
        """Ask every request concurrently; each result is the answer or its ``CallError``.
        ``parse`` is one parser for all, or one per request."""
        parsers = parse if isinstance(parse, list) else [parse] * len(requests)

        async def one(req: ModelRequest, p: Callable[[Any], T]) -> T | CallError:
            try:
                return await self.ask(req, p, usage)
            except CallError as err:
                return err

        if not requests:
            return []
        return self.map(
            [lambda r=r, p=p: one(r, p) for r, p in zip(requests, parsers, strict=True)]
        )


def retrying(settings: ClientSettings) -> Any:
    """tenacity's async retry loop for transient errors, as the settings say."""
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

    return AsyncRetrying(
        stop=stop_after_attempt(settings.attempts),
        wait=RetryAfterWait(settings.backoff_initial, settings.backoff_max),
        retry=retry_if_exception_type(TransientError),
        reraise=True,
    )


def fatal_status(status: int, detail: str, what: str) -> BackendError:
    """The error for a status that means the configuration is wrong (stops the run)."""
    fixes = {
        401: "set a valid key in the environment (GEMINI_API_KEY / OPENAI_API_KEY)",
        403: "check the key's permissions and the project's API access",
        404: "check the model id (the *_MODEL fields) and the base URL",
    }
    return BackendError(
        f"{what} answered {status}: {redact(detail)[:200]}",
        fixes.get(status, "check the configuration"),
    )
