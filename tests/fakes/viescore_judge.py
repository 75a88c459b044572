"""How a VIEScore / EditScore judge model answers its two calls, for the fake server.

Sources: EditScore (``editscore/vie_prompts.py``: the output form ``{"reasoning" :
"...", "score" : [...]}``; ``EditScore.__init__``: the prompts state the range R, 25 for
its models; ``utils.mllm_output_to_dict``: open models fence the JSON, add prose around
it, or answer a bare list such as ``[6, 0]``), VIEScore and GEdit-Bench (R = 10). The SC
call carries two images (source, edited) and asks ``[editing success, over-editing]``;
the PQ call carries the edited image alone and asks ``[naturalness, artifacts]``; both
on 0..R as the prompt states it.

Answer styles (``style``): ``json`` (the object alone), ``fenced`` (in a ```json fence),
``prose`` (a sentence before and after), ``bare`` (the list only), and ``unparseable``
(a model that does not speak the protocol: ImgEdit-Judge's labelled lines). Content
faults (``fault``): ``malformed`` (cut off inside the list), ``schema`` (scores as words),
``range`` (a score above R), ``ambiguous`` (three scores); ``safety`` / ``truncated``
carry a passing-looking answer with a bad finish reason.
"""

from __future__ import annotations

import hashlib
import json
import re

STYLES = ("json", "fenced", "prose", "bare", "unparseable")
_RANGE = re.compile(r"scale from 0 to (\d+)")
_ASK = '"score" : [...]'


def is_viescore_request(text: str) -> bool:
    """Whether a request's user text is a VIEScore SC or PQ prompt."""
    return _ASK in text and _RANGE.search(text) is not None


def stated_range(text: str) -> int:
    """R as the prompt states it."""
    match = _RANGE.search(text)
    assert match is not None
    return int(match.group(1))


def scores(text: str, n_images: int) -> list[int]:
    """The two scores on 0..R, deterministic in the request text (SC: two images)."""
    r = stated_range(text)
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    shares = (1.0, 1.0, 0.96, 0.92, 0.8, 0.6, 0.3, 0.0)
    a = round(r * shares[h % 8])
    b = round(r * shares[(h >> 3) % 8]) if n_images == 2 else round(r * shares[(h >> 6) % 4])
    return [a, b]


def answer(text: str, n_images: int, style: str = "json", fault: str | None = None) -> str:
    """The model's answer text to an SC (two images) or PQ (one image) request."""
    r = stated_range(text)
    pair = scores(text, n_images)
    what = "the edit is carried out" if n_images == 2 else "the image looks natural"
    if fault == "malformed":
        return '{"reasoning": "' + what + '", "score": [' + str(r)
    if fault == "schema":
        return json.dumps({"reasoning": what, "score": ["ten", "ten"]})
    if fault == "range":
        pair = [r + 5, r + 5]
    if fault == "ambiguous":
        pair = [r, r, 0]
    if fault in ("safety", "truncated"):
        pair = [r, r]
    obj = '{\n"reasoning" : "' + what + '",\n"score" : ' + json.dumps(pair) + "\n}"
    if style == "fenced":
        return "```json\n" + obj + "\n```"
    if style == "prose":
        return "Here is my evaluation.\n" + obj + "\nI hope this helps."
    if style == "bare":
        return json.dumps(pair)
    if style == "unparseable":
        return f"Brief reasoning: {what}.\nPrompt Compliance: 4\nVisual Naturalness: 4"
    return obj
