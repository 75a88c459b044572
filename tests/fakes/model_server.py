"""A fake Gemini API and a fake OpenAI-compatible endpoint on 127.0.0.1, with faults.

One ``ThreadingHTTPServer`` answers

- ``POST /{version}/models/{model}:generateContent`` (Gemini),
- ``POST /{version}/models/{model}:batchGenerateContent`` and ``GET /{version}/batches/{id}``
  (the Gemini Batch API, inlined requests and responses),
- ``POST /v1/chat/completions`` (OpenAI-compatible),

with plausible JSON built from the request's response schema (scores on 1–5, yes/no,
instructions, prompts), deterministic in the request's text and images, so a chain can
run against it. Faults are injected at random (``fault_rate`` over ``fault_kinds``) or
scripted (``queue(...)``, served in order before any random one):

``429`` (with ``Retry-After``), ``500``, ``503`` (any other status by its number),
``slow`` (answers after
``slow_seconds``, past a client's timeout), ``malformed`` (cut-off JSON), ``schema``
(wrong types), ``range`` (scores of 7.5), ``safety`` (SAFETY finish), ``truncated``
(MAX_TOKENS finish), ``empty`` (no candidates), ``leak`` (a 400 whose message echoes
the API key, to test redaction). Content faults carry a *passing-looking* answer, so a
client that trusted them would count a pass.

Judge formats: a request asking for no structured output is answered in free text as
the judge its prompt is written for answers: a VIEScore SC or PQ prompt as an EditScore /
VIEScore model does (``fakes.viescore_judge``; ``viescore_style`` picks fenced, prose,
bare-list or unparseable answers), any other as ImgEdit-Judge does
(``fakes.imgedit_judge``: ``Brief reasoning: ...`` and three labelled 1–5 lines;
``malformed`` drops the third, ``schema`` writes words, ``range`` gives 7, and the
scripted-only ``ambiguous`` repeats the first with another value).

With a ``judge`` (``--synthetic-judge`` on the command line: the synthetic world's
``SyntheticJudge``), gate, pre-filter and hard-validator requests — known by their
schemas — are answered with that judge's own verdict on the request's images and quoted
prompt or instruction, so a run judged through the fake is judged as the synthetic world
would judge it locally (and its truth audit means something); faults still apply on top.

Every request is logged (time, api, fault served, the user text, the answer's fields),
so tests can count calls and check what each subject was finally told. Run it alone with
``python tests/fakes/model_server.py --port 8765 [--latency 0.25] [--synthetic-judge]``
(``--port 0``: any free port; the first line printed names the URL).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    from fakes import imgedit_judge, viescore_judge
except ImportError:  # run as a script from tests/fakes
    import imgedit_judge  # type: ignore[no-redef]
    import viescore_judge  # type: ignore[no-redef]

TRANSPORT_FAULTS = ("429", "500", "503", "slow")
CONTENT_FAULTS = ("malformed", "schema", "range", "safety", "truncated", "empty")
ALL_FAULTS = TRANSPORT_FAULTS + CONTENT_FAULTS

AnswerFn = Callable[[dict[str, Any], str], dict[str, Any] | None]
# the quoted value (the prompt or instruction, a JSON string) ending a judge request
_QUOTED = re.compile(r'\): ("(?:[^"\\]|\\.)*")\s*$')


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def default_answer(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """A plausible answer to a schema, deterministic in the request text."""
    props = schema.get("properties", {})
    h = _h(text)
    out: dict[str, Any] = {}
    for i, (name, spec) in enumerate(props.items()):
        hi = (h >> (3 * i)) & 0xFF
        kind = spec.get("type", "string").lower()
        if kind in ("number", "integer"):
            out[name] = [5.0, 4.9, 4.8, 4.8, 4.5, 4.0, 3.0, 2.0][hi % 8]
        elif spec.get("enum") == ["yes", "no"]:
            good = name in ("answer", "AestheticallyAcceptable")
            out[name] = ("yes" if good else "no") if hi % 10 < 7 else ("no" if good else "yes")
        elif kind == "array":
            n = spec.get("minItems", 3)
            out[name] = [f"change item {j + 1} of the scene to something new" for j in range(n)]
        elif name == "prompt":
            out[name] = f"A photo of {1 + h % 4} small objects on a wooden table, soft light."
        else:
            out[name] = "make the red object blue"
    return out


def passing_answer(schema: dict[str, Any]) -> dict[str, Any]:
    """The answer that would pass every check, for faulty responses to carry."""
    out = default_answer(schema, "")
    for name, spec in schema.get("properties", {}).items():
        if spec.get("type", "").lower() == "number":
            out[name] = 5.0
        elif spec.get("enum") == ["yes", "no"]:
            out[name] = "no" if name == "UnwantedModifications" else "yes"
    return out


def _schema_fault(answer: dict[str, Any]) -> dict[str, Any]:
    """Wrong types: numbers as strings, yes/no as 'maybe', text as a number."""
    out: dict[str, Any] = {}
    for k, v in answer.items():
        if isinstance(v, float | int):
            out[k] = str(v)
        elif v in ("yes", "no"):
            out[k] = "maybe"
        elif isinstance(v, list):
            out[k] = v[:-1] if len(v) > 1 else "n/a"
        else:
            out[k] = 42
    return out


class FakeModelServer:
    """The fake server; use as a context manager or call ``start()`` / ``stop()``."""

    def __init__(
        self,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: tuple[str, ...] = ALL_FAULTS,
        seed: int = 0,
        retry_after: str = "0.05",
        slow_seconds: float = 2.0,
        answer: AnswerFn | None = None,
        batch_pending_polls: int = 1,
        port: int = 0,
        judge: Any = None,
        viescore_style: str = "json",
    ) -> None:
        self.latency = latency
        self.fault_rate = fault_rate
        self.fault_kinds = fault_kinds
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.answer = answer
        self.batch_pending_polls = batch_pending_polls
        self.judge = judge
        self.viescore_style = viescore_style
        self._judge_lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self._scripted: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                server._post(self, body)

            def do_GET(self) -> None:
                server._get(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up: expected under faults

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.openai_url = f"{self.url}/v1"
        self._thread: threading.Thread | None = None

    # ---- control --------------------------------------------------------------------
    def start(self) -> FakeModelServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queue(self, *kinds: str) -> None:
        """Serve these faults, in order, to the next requests."""
        with self._lock:
            self._scripted.extend(kinds)

    def requests(self, api: str | None = None) -> list[dict[str, Any]]:
        """Logged requests (of one api: gemini, openai, batch_create, batch_get)."""
        with self._lock:
            return [r for r in self.log if api is None or r["api"] == api]

    @property
    def count(self) -> int:
        """Requests served so far."""
        with self._lock:
            return len(self.log)

    # ---- internals --------------------------------------------------------------------
    def _fault(self, allowed: tuple[str, ...] = ALL_FAULTS) -> str | None:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
            kinds = [k for k in self.fault_kinds if k in allowed]
            if kinds and self._rng.random() < self.fault_rate:
                return self._rng.choice(kinds)
        return None

    def _record(
        self, api: str, fault: str | None, text: str, key: str, schema: dict | None = None
    ) -> None:
        fields = ",".join(sorted((schema or {}).get("properties", {})))
        entry = {"t": time.monotonic(), "api": api, "fault": fault, "text": text, "key": key}
        with self._lock:
            self.log.append({**entry, "fields": fields})

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, obj: Any, headers: dict | None = None
    ) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, fault: str, key: str) -> bool:
        """Send a transport fault's response; True when one was sent."""
        if fault == "429":
            self._send(
                h,
                429,
                {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
                {"retry-after": self.retry_after},
            )
        elif fault.isdigit():
            status = {"500": "INTERNAL", "503": "UNAVAILABLE"}.get(fault, "ERROR")
            self._send(
                h, int(fault), {"error": {"code": int(fault), "message": "x", "status": status}}
            )
        elif fault == "leak":
            msg = f"API key {key} is not valid for this request"
            self._send(
                h, 400, {"error": {"code": 400, "message": msg, "status": "INVALID_ARGUMENT"}}
            )
        else:
            return False
        return True

    def _judged(
        self, schema: dict[str, Any], text: str, images: tuple[bytes, ...]
    ) -> dict[str, Any] | None:
        """The ``judge``'s own answer to a gate, pre-filter or validator request (by its
        schema's fields), or None for any other request."""
        fields = set(schema.get("properties", {}))
        match = _QUOTED.search(text)
        if self.judge is None or match is None or not images:
            return None
        from PIL import Image

        quoted = json.loads(match.group(1))
        pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        with self._judge_lock:
            if fields == {"answer"} and len(pics) == 1:
                return {
                    "answer": "yes" if self.judge.plausibility(pics, [quoted])[0].answer else "no"
                }
            if len(pics) != 2:
                return None
            if "UnwantedModifications" in fields:
                a = self.judge.prefilter(pics[:1], pics[1:], [quoted])[0]
                return {
                    "InstructionAdherence": a.scores.adherence,
                    "ImageAesthetic": a.scores.aesthetic,
                    "UnwantedModifications": "yes" if a.unwanted_changes else "no",
                    "AestheticallyAcceptable": "yes" if a.aesthetic_ok else "no",
                }
            if fields == {"InstructionAdherence", "ImageAesthetic"}:
                s = self.judge.score(pics[:1], pics[1:], [quoted])[0]
                return {"InstructionAdherence": s.adherence, "ImageAesthetic": s.aesthetic}
        return None

    def _content(
        self,
        schema: dict[str, Any],
        text: str,
        fault: str | None,
        free_text: bool = False,
        images: tuple[bytes, ...] = (),
        n_images: int = 0,
    ) -> tuple[str, str]:
        """(answer text, finish) for a request, with a content fault applied."""
        finish = {"safety": "SAFETY", "truncated": "MAX_TOKENS"}.get(fault or "", "STOP")
        if free_text and viescore_judge.is_viescore_request(text):
            n = n_images or len(images)
            return viescore_judge.answer(text, n, self.viescore_style, fault), finish
        if free_text:  # no structured output asked: an ImgEdit-Judge answer
            return imgedit_judge.answer(text, fault), finish
        clean = (
            self._judged(schema, text, images)
            or (self.answer(schema, text) if self.answer else None)
            or default_answer(schema, text)
        )
        has_numbers = any(
            s.get("type", "").lower() == "number" for s in schema.get("properties", {}).values()
        )
        if fault == "range" and not has_numbers:
            fault = "schema"
        if fault == "malformed":
            return json.dumps(passing_answer(schema))[:-3], "STOP"
        if fault == "schema":
            return json.dumps(_schema_fault(clean)), "STOP"
        if fault == "range":
            bad = passing_answer(schema)
            for k, s in schema.get("properties", {}).items():
                if s.get("type", "").lower() == "number":
                    bad[k] = 7.5
            return json.dumps(bad), "STOP"
        if fault == "safety":
            return json.dumps(passing_answer(schema)), "SAFETY"
        if fault == "truncated":
            return json.dumps(passing_answer(schema)), "MAX_TOKENS"
        return json.dumps(clean), "STOP"

    @staticmethod
    def _gemini_text(request: dict[str, Any]) -> tuple[str, int]:
        """(user text with image hashes, number of images) of a Gemini request."""
        bits, images = [], 0
        for content in request.get("contents", []):
            for part in content.get("parts", []):
                if "text" in part:
                    bits.append(part["text"])
                blob = part.get("inlineData") or part.get("inline_data")
                if blob:
                    images += 1
                    bits.append("img:" + hashlib.sha256(blob["data"].encode()).hexdigest()[:12])
        return "\n".join(bits), images

    @staticmethod
    def _gemini_images(request: dict[str, Any]) -> tuple[bytes, ...]:
        """The decoded inline images of a Gemini request, in order."""
        out = []
        for content in request.get("contents", []):
            for part in content.get("parts", []):
                blob = part.get("inlineData") or part.get("inline_data")
                if blob:
                    data = blob["data"]  # google-genai sends URL-safe base64
                    out.append(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        return tuple(out)

    @staticmethod
    def _gemini_schema(request: dict[str, Any]) -> dict[str, Any]:
        cfg = request.get("generationConfig") or request.get("generation_config") or {}
        return cfg.get("responseJsonSchema") or cfg.get("responseSchema") or {}

    def _gemini_response(self, request: dict[str, Any], fault: str | None) -> dict[str, Any]:
        text, images = self._gemini_text(request)
        usage = {"promptTokenCount": len(text) // 4 + 258 * images}
        if fault == "empty":
            return {"candidates": [], "usageMetadata": usage}
        cfg = request.get("generationConfig") or request.get("generation_config") or {}
        free = (cfg.get("responseMimeType") or cfg.get("response_mime_type")) == "text/plain"
        answer, finish = self._content(
            self._gemini_schema(request), text, fault, free, self._gemini_images(request), images
        )
        usage["candidatesTokenCount"] = len(answer) // 4 + 1
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": answer}]},
                    "finishReason": finish,
                    "index": 0,
                }
            ],
            "usageMetadata": usage,
        }

    def _post(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        key = h.headers.get("x-goog-api-key") or h.headers.get("authorization", "")
        path = h.path.split("?")[0]
        if self.latency:
            time.sleep(self.latency)
        if m := re.match(r"^/[\w.]+/models/(.+):generateContent$", path):
            text, _ = self._gemini_text(body)
            fault = self._fault()
            self._record("gemini", fault, text, key, self._gemini_schema(body))
            if fault in ("slow",):
                time.sleep(self.slow_seconds)
                fault = None
            if not self._error(h, fault or "", key):
                self._send(h, 200, self._gemini_response(body, fault))
        elif m := re.match(r"^/[\w.]+/models/(.+):batchGenerateContent$", path):
            fault = self._fault(("429", "500", "503"))
            self._record("batch_create", fault, "", key)
            if self._error(h, fault or "", key):
                return
            with self._lock:
                name = f"batches/b{len(self.batches) + 1:04d}"
                items = body["batch"]["inputConfig"]["requests"]["requests"]
                self.batches[name] = {"model": m.group(1), "items": items, "polls": 0}
            self._send(h, 200, self._batch_job(name))
        elif path.endswith("/chat/completions"):
            self._openai(h, body, key)
        else:
            self._send(h, 404, {"error": {"code": 404, "message": f"no route {path}"}})

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        key = h.headers.get("x-goog-api-key", "")
        path = h.path.split("?")[0]
        m = re.match(r"^/[\w.]+/(batches/\w+)$", path)
        if not m or m.group(1) not in self.batches:
            self._send(h, 404, {"error": {"code": 404, "message": f"no route {path}"}})
            return
        fault = self._fault(("429", "500", "503"))
        self._record("batch_get", fault, "", key)
        if self._error(h, fault or "", key):
            return
        with self._lock:
            self.batches[m.group(1)]["polls"] += 1
        self._send(h, 200, self._batch_job(m.group(1)))

    def _batch_job(self, name: str) -> dict[str, Any]:
        job = self.batches[name]
        done = job["polls"] >= self.batch_pending_polls
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": job["model"],
            "name": name,
            "state": "BATCH_STATE_SUCCEEDED" if done else "BATCH_STATE_PENDING",
        }
        if done:
            if "responses" not in job:
                out = []
                for item in job["items"]:
                    fault = self._fault(CONTENT_FAULTS)
                    text, _ = self._gemini_text(item["request"])
                    self._record(
                        "batch_item", fault, text, "", self._gemini_schema(item["request"])
                    )
                    out.append(
                        {
                            "response": self._gemini_response(item["request"], fault),
                            "metadata": item.get("metadata"),
                        }
                    )
                job["responses"] = out
            meta["output"] = {"inlinedResponses": {"inlinedResponses": job["responses"]}}
        return {"name": name, "metadata": meta, "done": done}

    def _openai(self, h: BaseHTTPRequestHandler, body: dict[str, Any], key: str) -> None:
        bits, images = [], 0
        for msg in body.get("messages", []):
            if msg.get("role") != "user":
                continue
            content = msg.get("content")
            for part in (
                content if isinstance(content, list) else [{"type": "text", "text": content}]
            ):
                if part.get("type") == "text":
                    bits.append(part["text"])
                elif part.get("type") == "image_url":
                    images += 1
                    url = part["image_url"]["url"]
                    bits.append("img:" + hashlib.sha256(url.encode()).hexdigest()[:12])
        text = "\n".join(bits)
        fault = self._fault()
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema", {})
        self._record("openai", fault, text, key, schema)
        if fault == "slow":
            time.sleep(self.slow_seconds)
            fault = None
        if self._error(h, fault or "", key):
            return
        usage = {"prompt_tokens": len(text) // 4 + 258 * images}
        if fault == "empty":
            self._send(
                h, 200, {"id": "x", "object": "chat.completion", "choices": [], "usage": usage}
            )
            return
        answer, finish = self._content(
            schema, text, fault, "response_format" not in body, n_images=images
        )
        usage["completion_tokens"] = len(answer) // 4 + 1
        reason = {"STOP": "stop", "SAFETY": "content_filter", "MAX_TOKENS": "length"}[finish]
        self._send(
            h,
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": reason,
                    }
                ],
                "usage": usage,
            },
        )


def encode_key_header(key: str) -> str:
    """A base64 form of a key (for scanning files for an encoded leak too)."""
    return base64.b64encode(key.encode()).decode()


def main() -> None:
    """Serve until interrupted (for `nhr run` against the fake, and the benchmark)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--viescore-style", default="json", choices=viescore_judge.STYLES, help="VIEScore answers"
    )
    parser.add_argument(
        "--synthetic-judge",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="NOISE",
        help="answer judge requests as the synthetic world's judge (of this noise, default 1)",
    )
    args = parser.parse_args()
    judge = None
    if args.synthetic_judge is not None:
        from nhr.backends.synthetic import SyntheticJudge

        judge = SyntheticJudge(noise=args.synthetic_judge)
    server = FakeModelServer(
        latency=args.latency,
        fault_rate=args.fault_rate,
        port=args.port,
        judge=judge,
        viescore_style=args.viescore_style,
    )
    print(f"listening on {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
