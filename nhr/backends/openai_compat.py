"""An OpenAI-compatible chat endpoint (vLLM, SGLang, TGI, ...) over ``httpx``.

Open VLMs such as Qwen2.5-VL, the paper's gate and pre-filter, are served this way. The
request is ``POST {base_url}/chat/completions`` with the system text, a user message of
text and ``data:image/png;base64`` image parts, and ``response_format`` set to a JSON
schema (structured output, which vLLM and SGLang enforce with guided decoding). The key,
if the server wants one, comes from the environment variable the config names.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from nhr.backends.api_client import (
    FATAL_STATUS,
    RETRIABLE_STATUS,
    CallError,
    ImagePart,
    ModelReply,
    ModelRequest,
    TransientError,
    fatal_status,
    parse_retry_after,
)
from nhr.errors import missing_extra

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
#: OpenAI finish reasons in Gemini's names, which the client layer checks.
FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}


class OpenAITransport:
    """``chat/completions`` with a JSON-schema response format."""

    name = "openai"

    def __init__(
        self, base_url: str, key_env: str = "OPENAI_API_KEY", max_connections: int = 64
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise missing_extra("httpx", "openai") from None
        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env
        self.max_connections = max_connections
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the module and the open HTTP client (a copy makes its own)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_httpx", "_client")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import httpx

        self.__dict__.update(state)
        self._httpx, self._client = httpx, None

    def client(self) -> Any:
        """The async HTTP client, made on first use (on the client layer's loop)."""
        if self._client is None:
            key = os.environ.get(self.key_env, "")
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._client = self._httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                limits=self._httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
            )
        return self._client

    @staticmethod
    def body(request: ModelRequest) -> dict[str, Any]:
        """The JSON body of a request."""
        content: list[dict[str, Any]] = []
        for p in request.parts:
            if isinstance(p, ImagePart):
                url = "data:image/png;base64," + base64.b64encode(p.data).decode()
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "text", "text": p})
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": content},
            ],
            "temperature": request.temperature,
            "max_tokens": request.max_output_tokens,
        }
        if not request.free_text:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.schema, "strict": True},
            }
        return body

    async def generate(self, request: ModelRequest, timeout: float) -> ModelReply:
        """One chat completion."""
        httpx = self._httpx
        try:
            resp = await self.client().post(
                "/chat/completions", json=self.body(request), timeout=timeout
            )
        except httpx.TimeoutException as err:
            raise TransientError("timeout", type(err).__name__) from None
        except httpx.TransportError as err:
            raise TransientError("connection", f"{type(err).__name__}: {err}") from None
        status = resp.status_code
        if status != 200:
            detail = f"{status}: {resp.text[:200]}"
            if status in RETRIABLE_STATUS:
                after = parse_retry_after(resp.headers.get("retry-after"))
                raise TransientError(f"http_{status}", detail, after)
            if status in FATAL_STATUS:
                raise fatal_status(status, detail, f"the endpoint {self.base_url}")
            raise CallError("http_error", detail)
        try:
            data = resp.json()
        except ValueError:
            raise CallError("malformed_json", "the endpoint's response is not JSON") from None
        usage = data.get("usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or 0)
        choices = data.get("choices") or []
        if not choices:
            return ModelReply("", "EMPTY", tokens_in, tokens_out)
        choice = choices[0]
        reason = str(choice.get("finish_reason") or "unspecified")
        text = (choice.get("message") or {}).get("content") or ""
        return ModelReply(text, FINISH.get(reason, reason.upper()), tokens_in, tokens_out)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
