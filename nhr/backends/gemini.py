"""Gemini through ``google-genai``: the transport of the client layer, and Batch API mode.

Credentials come from the environment only: ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``),
or Vertex AI through its usual variables (``GOOGLE_GENAI_USE_VERTEXAI=true``,
``GOOGLE_CLOUD_PROJECT``, ``GOOGLE_CLOUD_LOCATION``, application default credentials).
``GOOGLE_GEMINI_BASE_URL`` (``GOOGLE_VERTEX_BASE_URL`` on Vertex) points the SDK at
another server, e.g. a proxy or the tests' fake. The SDK's own retries are off: the
client layer retries, honouring ``Retry-After``.

Batch mode submits the requests of a batch as one Gemini batch job (about half the
price), records the job's name in the run's cache database *before* polling, polls until
it finishes, and collects the inlined responses into the request cache. A process that
dies between submit and collect finds the job by the hash of its request keys on the
rerun and collects it without submitting again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any, TypeVar

from nhr.backends.api_client import (
    FATAL_STATUS,
    RETRIABLE_STATUS,
    CallError,
    ImagePart,
    ModelReply,
    ModelRequest,
    RemoteClient,
    TransientError,
    Usage,
    check_reply,
    fatal_status,
    parse_retry_after,
    retrying,
)
from nhr.errors import BackendError, missing_extra

T = TypeVar("T")

DEFAULT_MODEL = "gemini-2.5-flash"
#: Inline batch requests must stay under the API's 20 MB request limit; jobs are split.
MAX_INLINE_BYTES = 18_000_000
_FAILED_STATES = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def _genai() -> tuple[Any, Any, Any]:
    """(genai, types, errors) from google-genai, or the error naming the extra."""
    try:
        from google import genai
        from google.genai import errors, types
    except ImportError:
        raise missing_extra("google-genai", "gemini") from None
    return genai, types, errors


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeout errors, connection errors) of the HTTP libraries the SDK may use."""
    timeouts: list[type[BaseException]] = []
    drops: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        timeouts.append(mod.TimeoutException)
        drops.append(mod.TransportError)
    return tuple(timeouts), tuple(drops)


def credentials_present() -> bool:
    """Whether the environment names a Gemini key or Vertex AI."""
    vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true", "yes")
    return bool(os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or vertex)


class GeminiTransport:
    """``generateContent`` with JSON output through ``client.aio``; no SDK retries."""

    name = "gemini"

    def __init__(self, thinking_budget: int = 0) -> None:
        _genai()
        if not credentials_present():
            raise BackendError(
                "no Gemini credentials in the environment",
                "set GEMINI_API_KEY (or GOOGLE_API_KEY), or GOOGLE_GENAI_USE_VERTEXAI=true "
                "with GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION",
            )
        self.thinking_budget = thinking_budget
        self._client: Any = None
        self._timeouts, self._drops = _transport_errors()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the SDK client (a copy makes its own on first use)."""
        return {**self.__dict__, "_client": None}

    def client(self) -> Any:
        """The SDK client, made on first use (on the client layer's loop thread)."""
        if self._client is None:
            genai, _, _ = _genai()
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            vertex = os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in ("1", "true")
            self._client = genai.Client() if vertex else genai.Client(api_key=key)
        return self._client

    def config(self, request: ModelRequest, timeout: float | None) -> Any:
        """The ``GenerateContentConfig`` of a request."""
        _, types, _ = _genai()
        return types.GenerateContentConfig(
            system_instruction=request.system,
            temperature=request.temperature,
            max_output_tokens=request.max_output_tokens,
            response_mime_type="text/plain" if request.free_text else "application/json",
            response_json_schema=None if request.free_text else request.schema,
            thinking_config=(
                types.ThinkingConfig(thinking_budget=self.thinking_budget)
                if self.thinking_budget >= 0
                else None
            ),
            http_options=types.HttpOptions(timeout=int(timeout * 1000)) if timeout else None,
        )

    @staticmethod
    def contents(request: ModelRequest) -> list[Any]:
        """The user turn: text and images in order."""
        _, types, _ = _genai()
        parts = [
            types.Part.from_bytes(data=p.data, mime_type="image/png")
            if isinstance(p, ImagePart)
            else types.Part.from_text(text=p)
            for p in request.parts
        ]
        return [types.Content(role="user", parts=parts)]

    @staticmethod
    def reply(response: Any) -> ModelReply:
        """A ``GenerateContentResponse`` as a ``ModelReply`` (finish reason by name)."""
        meta = response.usage_metadata
        tokens_in = int(getattr(meta, "prompt_token_count", 0) or 0)
        tokens_out = int(getattr(meta, "candidates_token_count", 0) or 0) + int(
            getattr(meta, "thoughts_token_count", 0) or 0
        )
        candidates = response.candidates or []
        if not candidates:
            feedback = getattr(response, "prompt_feedback", None)
            block = getattr(feedback, "block_reason", None)
            finish = f"BLOCKED:{getattr(block, 'name', block)}" if block else "EMPTY"
            return ModelReply("", finish, tokens_in, tokens_out)
        cand = candidates[0]
        reason = cand.finish_reason
        finish = getattr(reason, "name", None) or (str(reason) if reason else "UNSPECIFIED")
        parts = (cand.content.parts or []) if cand.content else []
        text = "".join(p.text for p in parts if p.text and not getattr(p, "thought", False))
        return ModelReply(text, finish, tokens_in, tokens_out)

    def classify(self, err: BaseException) -> BaseException:
        """The client layer's error for an SDK or HTTP exception."""
        _, _, errors = _genai()
        if isinstance(err, errors.APIError):
            status = int(err.code or 0)
            headers = getattr(getattr(err, "response", None), "headers", None)
            after = parse_retry_after(headers.get("retry-after")) if headers else None
            detail = f"{status} {err.status or ''}: {err.message or ''}".strip()
            if status in RETRIABLE_STATUS:
                return TransientError(f"http_{status}", detail, after)
            if status in FATAL_STATUS:
                return fatal_status(status, detail, "the Gemini API")
            return CallError("http_error", detail)
        if isinstance(err, self._timeouts):
            return TransientError("timeout", f"{type(err).__name__}")
        if isinstance(err, self._drops):
            return TransientError("connection", f"{type(err).__name__}: {err}")
        return err

    async def generate(self, request: ModelRequest, timeout: float) -> ModelReply:
        """One ``generateContent`` call."""
        try:
            response = await self.client().aio.models.generate_content(
                model=request.model,
                contents=self.contents(request),
                config=self.config(request, timeout),
            )
        except Exception as err:
            mapped = self.classify(err)
            if mapped is err:
                raise
            raise mapped from None
        return self.reply(response)

    async def aclose(self) -> None:
        """Close the SDK's async HTTP client."""
        if self._client is not None:
            try:
                await self._client.aio.aclose()
            except (AttributeError, RuntimeError):
                pass


class GeminiBatchMode:
    """Bulk requests through the Gemini Batch API: submit, poll, collect, resumable."""

    def __init__(
        self,
        client: RemoteClient,
        poll_seconds: float = 30.0,
        max_wait_seconds: float = 86_400.0,
        max_inline_bytes: int = MAX_INLINE_BYTES,
    ) -> None:
        if not isinstance(client.transport, GeminiTransport):
            raise BackendError(
                "batch mode needs the gemini backend", "unset GEMINI_BATCH_ROLES for this role"
            )
        if client.cache is None:
            raise BackendError("batch mode needs the request cache", "set API_CACHE: true")
        self.client = client
        self.transport: GeminiTransport = client.transport
        self.poll_seconds = poll_seconds
        self.max_wait_seconds = max_wait_seconds
        self.max_inline_bytes = max_inline_bytes

    def ask_many(
        self, requests: list[ModelRequest], parse: Any, usage: Usage | None = None
    ) -> list[Any]:
        """Answers (or ``CallError``s) for every request; cached ones need no job."""
        return self.client.run(self._ask_many(requests, parse, usage))

    async def _ask_many(
        self, requests: list[ModelRequest], parse: Any, usage: Usage | None
    ) -> list[Any]:
        cache = self.client.cache
        assert cache is not None
        counters = [self.client.usage, *([usage] if usage is not None else [])]
        keys = [r.key() for r in requests]
        results: list[Any] = [None] * len(requests)
        todo: dict[str, ModelRequest] = {}
        for i, (req, key) in enumerate(zip(requests, keys, strict=True)):
            cached = cache.get(key)
            if cached is not None:
                try:
                    results[i] = parse(check_reply(cached, req.free_text))
                    for u in counters:
                        u.add(cache_hits=1)
                    continue
                except CallError:
                    pass
            todo[key] = req
        replies: dict[str, ModelReply | CallError] = {}
        for chunk in self._chunks(list(todo.items())):
            replies.update(await self._job(chunk, counters))
        for i, key in enumerate(keys):
            if results[i] is not None or key not in todo:
                continue
            got = replies.get(key, CallError("batch_missing", "no response for this request"))
            try:
                if isinstance(got, CallError):
                    raise got
                results[i] = parse(check_reply(got, todo[key].free_text))
                cache.put(key, todo[key].model, got)
            except CallError as err:
                results[i] = err
                for u in counters:
                    u.add(errors=1)
        return results

    def _chunks(
        self, items: list[tuple[str, ModelRequest]]
    ) -> list[list[tuple[str, ModelRequest]]]:
        """Split requests (in a stable order) into jobs under the inline size limit."""
        chunks: list[list[tuple[str, ModelRequest]]] = []
        size = 0
        for key, req in sorted(items, key=lambda kv: kv[0]):
            n = 4 * sum(len(p.data) if isinstance(p, ImagePart) else len(p) for p in req.parts)
            n = n // 3 + len(req.system) + 1000
            if not chunks or size + n > self.max_inline_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append((key, req))
            size += n
        return chunks

    async def _submit(self, chunk: list[tuple[str, ModelRequest]]) -> str:
        """Create the batch job of a chunk; returns its name."""
        _, types, _ = _genai()
        model = chunk[0][1].model
        inlined = [
            types.InlinedRequest(
                model=req.model,
                contents=self.transport.contents(req),
                config=self.transport.config(req, None),
                metadata={"key": key},
            )
            for key, req in chunk
        ]
        job = await self._call(
            lambda: self.transport.client().aio.batches.create(
                model=model,
                src=inlined,
                config=types.CreateBatchJobConfig(display_name=f"nhr-{chunk[0][0][:12]}"),
            )
        )
        return str(job.name)

    async def _call(self, make: Any) -> Any:
        """An SDK call retried on transient errors (honouring Retry-After)."""
        async for attempt in retrying(self.client.settings):
            with attempt:
                try:
                    return await make()
                except Exception as err:
                    mapped = self.transport.classify(err)
                    if mapped is err:
                        raise
                    raise mapped from None
        raise AssertionError("unreachable")

    async def _job(
        self, chunk: list[tuple[str, ModelRequest]], counters: list[Usage]
    ) -> dict[str, ModelReply | CallError]:
        """Submit (or find) the job of a chunk, wait for it, and collect its replies."""
        cache = self.client.cache
        assert cache is not None
        keys = [k for k, _ in chunk]
        model = chunk[0][1].model
        batch_key = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        known = cache.job(batch_key)
        try:
            if known is None:
                name = await self._submit(chunk)
                cache.put_job(batch_key, name, model, keys, "SUBMITTED")
                for u in counters:
                    u.add(calls=len(chunk), batch_jobs=1)
            else:
                name = known[0]
                for u in counters:
                    u.add(batch_jobs_resumed=1)
            job = await self._wait(name)
        except (TransientError, CallError) as err:
            return dict.fromkeys(keys, CallError("batch_failed", str(err)))
        state = getattr(job.state, "name", str(job.state))
        if state != "JOB_STATE_SUCCEEDED":
            if state in _FAILED_STATES:
                cache.drop_job(batch_key)
                return dict.fromkeys(keys, CallError("batch_failed", f"job {name} {state}"))
            return dict.fromkeys(
                keys, CallError("batch_timeout", f"job {name} still {state}; rerun to collect")
            )
        out: dict[str, ModelReply | CallError] = {}
        responses = list(getattr(job.dest, "inlined_responses", None) or [])
        for i, item in enumerate(responses):
            key = (item.metadata or {}).get("key") if item.metadata else None
            key = key or (keys[i] if i < len(keys) else None)
            if key is None:
                continue
            if item.error:
                out[key] = CallError("batch_item_error", str(item.error))
            elif item.response is None:
                out[key] = CallError("empty_response", "batch item without a response")
            else:
                reply = self.transport.reply(item.response)
                self.client.account(model, reply, counters, batch=True)
                out[key] = reply
        cache.put_job(batch_key, name, model, keys, "COLLECTED")
        return out

    async def _wait(self, name: str) -> Any:
        """Poll a job until it leaves the pending/running states or the wait runs out."""
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            job = await self._call(lambda: self.transport.client().aio.batches.get(name=name))
            state = getattr(job.state, "name", str(job.state))
            if state == "JOB_STATE_SUCCEEDED" or state in _FAILED_STATES:
                return job
            if time.monotonic() >= deadline:
                return job
            await asyncio.sleep(self.poll_seconds)
