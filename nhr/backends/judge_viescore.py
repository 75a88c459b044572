"""VIEScore as VIEScore, GEdit-Bench's scorer and EditScore speak it: two calls, two score
lists, SC / PQ / O on 0–10.

The protocol (VIEScore; GEdit-Bench; the ``editscore`` package, ``vie_prompts.py`` and
``EditScore.evaluate``):

- **SC call**: the source and the edited image with the instruction; the model answers
  ``{"reasoning": "...", "score": [success, overediting]}`` (prompt ``viescore_sc_v2.txt``).
- **PQ call**: the edited image alone; ``{"reasoning": "...", "score": [naturalness,
  artifacts]}`` (prompt ``viescore_pq_v2.txt``). It does not depend on the instruction,
  so it is asked once per edited image and reused wherever that image is judged again
  (the same request: one call per batch, then the request cache).
- Scores are on 0..R: R = 10 in VIEScore and GEdit-Bench; EditScore's models were trained
  with R = 25 (its prompts say 25 where VIEScore says 10). ``VIESCORE_RANGE`` sets R.
- ``SC = min(SC scores) / (R/10)``, ``PQ = min(PQ scores) / (R/10)``, ``O = √(SC·PQ)``,
  all on 0–10 (EditScore's formula, unrounded).

Open models wrap the JSON in code fences, add prose around it, or answer a bare list
``[6, 0]``; the parser accepts these as EditScore's own does (the JSON object from the
first ``{`` to the last ``}``, else the list from the first ``[`` to the last ``]``,
repaired by ``json-repair``). It is strict where it matters: an answer without exactly
two numeric scores, or with one outside 0..R, is an error (never a guessed score, as
EditScore's parser falls back to).

``VIEScorer`` makes the two calls and returns ``VIEScoreResult`` s (SC, PQ, O, both score
lists, reasoning and raw answers); it is what other code (an editor benchmark) reuses.
``VIEScoreJudge`` serves the hard validator: adherence = 1 + 0.4·SC, aesthetic =
1 + 0.4·PQ (0 → 1, 10 → 5, linear), so the paper's threshold 4.7 asks SC ≥ 9.25 and
PQ ≥ 9.25; SC, PQ, O and both raw answers stay in the verdict's ``details``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from nhr.backends.api_client import CallError, ModelRequest, RemoteClient, Usage
from nhr.backends.api_roles import PromptTemplate, image_part
from nhr.backends.base import Scores, check_triplet_lengths
from nhr.backends.judge_format import RAW_MAX_CHARS, FormatJudge
from nhr.errors import ConfigError, missing_extra

PROMPT_VERSION = 2
#: Score ranges the prompts may state (VIEScore/GEdit-Bench: 10; EditScore: 25).
RANGE_MIN, RANGE_MAX = 1, 100
#: PQ results kept in memory per scorer (by request key), beside the request cache.
PQ_MEMORY = 4096


@dataclass(frozen=True)
class ScoreAnswer:
    """One parsed answer: the two scores (on 0..R) and the reasoning ('' for a bare list)."""

    scores: tuple[float, float]
    reasoning: str


@dataclass(frozen=True)
class VIEScoreResult:
    """SC, PQ and O (0–10) of one (source, edited, instruction), with what they came from.

    ``error`` is ``"kind: detail"`` when either call gave no usable answer; the scores are
    then NaN and must not be used. ``sc_raw`` / ``pq_raw`` are the answers as written."""

    sc: float
    pq: float
    overall: float
    sc_scores: tuple[float, ...] = ()
    pq_scores: tuple[float, ...] = ()
    sc_reasoning: str = ""
    pq_reasoning: str = ""
    sc_raw: str = ""
    pq_raw: str = ""
    score_range: int = 10
    error: str | None = None

    def as_details(self) -> dict[str, Any]:
        """The result as a verdict's details (raw answers cut to ``RAW_MAX_CHARS``)."""
        return {
            "judge_style": "viescore",
            "score_range": self.score_range,
            "sc": self.sc,
            "pq": self.pq,
            "overall": self.overall,
            "sc_scores": list(self.sc_scores),
            "pq_scores": list(self.pq_scores),
            "sc_reasoning": self.sc_reasoning[:1000],
            "pq_reasoning": self.pq_reasoning[:1000],
            "raw_sc": self.sc_raw[:RAW_MAX_CHARS],
            "raw_pq": self.pq_raw[:RAW_MAX_CHARS],
        }


def check_range(score_range: int) -> int:
    """``score_range`` if it is a whole number in 1..100, else a ``ConfigError``."""
    if isinstance(score_range, bool) or not isinstance(score_range, int):
        raise ConfigError(f"VIEScore range {score_range!r}", "give a whole number, e.g. 10 or 25")
    if not RANGE_MIN <= score_range <= RANGE_MAX:
        raise ConfigError(
            f"VIEScore range {score_range} is outside {RANGE_MIN}..{RANGE_MAX}",
            "use 10 (VIEScore, GEdit-Bench) or 25 (EditScore models)",
        )
    return score_range


def _repair(text: str) -> Any:
    """``json-repair``'s reading of a JSON fragment."""
    try:
        import json_repair
    except ImportError:
        raise missing_extra("json-repair", "openai") from None
    try:
        return json_repair.loads(text)
    except (ValueError, RecursionError):
        return None


def _number(value: Any) -> float | None:
    """A score as a float: a JSON number or a string holding one; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def parse_score_answer(value: Any, score_range: int = 10) -> ScoreAnswer:
    """The two scores of an SC or PQ answer on 0..``score_range`` (see the module
    docstring); raises ``CallError`` for anything that is not exactly two scores in range."""
    if not isinstance(value, str):
        raise CallError("schema_violation", f"expected a text answer, got {type(value).__name__}")
    text = value.strip()
    start, end = text.find("{"), text.rfind("}")
    if start >= 0:
        obj = _repair(text[start : end + 1] if end > start else text[start:])
        if not isinstance(obj, dict) or "score" not in obj:
            raise CallError("schema_violation", f"no 'score' in the JSON of {text[:80]!r}")
        raw_scores, reasoning = obj["score"], obj.get("reasoning", "")
    else:
        start, end = text.find("["), text.rfind("]")
        if start < 0 or end < start:
            raise CallError("schema_violation", f"no JSON object or score list in {text[:80]!r}")
        raw_scores, reasoning = _repair(text[start : end + 1]), ""
    if not isinstance(raw_scores, list) or len(raw_scores) != 2:
        raise CallError("schema_violation", f"score is {raw_scores!r:.60}, not a list of two")
    scores = [_number(v) for v in raw_scores]
    if any(s is None for s in scores):
        raise CallError("schema_violation", f"score {raw_scores!r:.60} holds a non-number")
    a, b = (float(s) for s in scores if s is not None)
    for s in (a, b):
        if not math.isfinite(s) or not 0.0 <= s <= score_range:
            raise CallError("out_of_range", f"score {s:g} is outside 0-{score_range}")
    return ScoreAnswer((a, b), reasoning if isinstance(reasoning, str) else str(reasoning))


def viescore(
    sc_scores: tuple[float, ...], pq_scores: tuple[float, ...], score_range: int = 10
) -> tuple[float, float, float]:
    """(SC, PQ, O) on 0–10 from the two score lists on 0..R, as EditScore computes them."""
    sc = min(sc_scores) / (score_range / 10)
    pq = min(pq_scores) / (score_range / 10)
    return sc, pq, math.sqrt(sc * pq)


def to_validator_scale(x: float) -> float:
    """A 0–10 score on the validator's 1–5 scale (linear: 0 → 1, 10 → 5)."""
    return round(1.0 + 0.4 * x, 4)


def load_templates(score_range: int) -> tuple[PromptTemplate, PromptTemplate]:
    """The SC and PQ prompt files with the range written in (the version names it)."""
    out = []
    for name in ("viescore_sc", "viescore_pq"):
        t = PromptTemplate.load(name, PROMPT_VERSION)
        out.append(
            replace(
                t,
                version=f"{t.version}-r{score_range}",
                system=t.system.replace("{{range}}", str(score_range)),
                user=t.user.replace("{{range}}", str(score_range)),
            )
        )
    return out[0], out[1]


class VIEScorer:
    """SC, PQ and O of (source, edited, instruction) triplets from a remote VLM, through
    the client layer (cache, limits, retries). One SC call per triplet; one PQ call per
    distinct edited image (within a batch by request key, across batches in memory and
    then in the request cache)."""

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        score_range: int = 10,
        image_max_side: int = 1024,
        max_output_tokens: int = 512,
    ) -> None:
        self.client = client
        self.model = model
        self.score_range = check_range(score_range)
        self.image_max_side = image_max_side
        self.max_output_tokens = max_output_tokens
        self.sc_template, self.pq_template = load_templates(self.score_range)
        self.prompt_version = f"viescore-v{PROMPT_VERSION}-r{self.score_range}"
        self._usage = Usage()
        self._pq: OrderedDict[str, tuple[ScoreAnswer | CallError, str]] = OrderedDict()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of both calls."""
        return self._usage.snapshot()

    def _request(
        self, template: PromptTemplate, values: dict[str, str], images: dict[str, Any]
    ) -> ModelRequest:
        system, parts = template.render(values, images)
        return ModelRequest(
            self.model,
            template.version,
            system,
            parts,
            {},
            0.0,
            self.max_output_tokens,
            free_text=True,
        )

    def _ask(self, requests: list[ModelRequest]) -> list[tuple[ScoreAnswer | CallError, str]]:
        """Each request's parsed answer (or its error) and the raw text last seen."""
        raws = [""] * len(requests)

        def parser(i: int) -> Any:
            def parse(value: Any) -> ScoreAnswer:
                raws[i] = value if isinstance(value, str) else repr(value)
                return parse_score_answer(value, self.score_range)

            return parse

        parsers = [parser(i) for i in range(len(requests))]
        out = self.client.ask_many(requests, parsers, self._usage) if requests else []
        return list(zip(out, raws, strict=True))

    def score_many(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[VIEScoreResult]:
        """One result per triplet (an error result when either call failed)."""
        check_triplet_lengths(sources, edits, instructions)
        edited = [image_part(e, self.image_max_side) for e in edits]
        sc_reqs = [
            self._request(
                self.sc_template,
                {"instruction": text},
                {"source": image_part(src, self.image_max_side), "edited": e},
            )
            for src, e, text in zip(sources, edited, instructions, strict=True)
        ]
        pq_reqs = [self._request(self.pq_template, {}, {"edited": e}) for e in edited]
        pq_keys = [r.key() for r in pq_reqs]
        todo = {k: r for k, r in zip(pq_keys, pq_reqs, strict=True) if k not in self._pq}
        answers = self._ask([*sc_reqs, *todo.values()])
        sc_answers = answers[: len(sc_reqs)]
        for key, got in zip(todo, answers[len(sc_reqs) :], strict=True):
            self._pq[key] = got
            if len(self._pq) > PQ_MEMORY:
                self._pq.popitem(last=False)
        pq_answers = [self._pq[k] for k in pq_keys]
        return [self._result(sc, pq) for sc, pq in zip(sc_answers, pq_answers, strict=True)]

    def _result(
        self, sc: tuple[ScoreAnswer | CallError, str], pq: tuple[ScoreAnswer | CallError, str]
    ) -> VIEScoreResult:
        (sc_answer, sc_raw), (pq_answer, pq_raw) = sc, pq
        nan = float("nan")
        for name, answer in (("SC", sc_answer), ("PQ", pq_answer)):
            if isinstance(answer, CallError):
                return VIEScoreResult(
                    nan,
                    nan,
                    nan,
                    sc_raw=sc_raw,
                    pq_raw=pq_raw,
                    score_range=self.score_range,
                    error=f"{answer.kind}: {name} answer: {answer.detail}",
                )
        assert isinstance(sc_answer, ScoreAnswer) and isinstance(pq_answer, ScoreAnswer)
        s, p, o = viescore(sc_answer.scores, pq_answer.scores, self.score_range)
        return VIEScoreResult(
            s,
            p,
            o,
            sc_answer.scores,
            pq_answer.scores,
            sc_answer.reasoning,
            pq_answer.reasoning,
            sc_raw,
            pq_raw,
            self.score_range,
        )


class VIEScoreJudge(FormatJudge):
    """The hard validator as a VIEScore judge (SC and PQ calls; see the module docstring)."""

    style = "viescore"

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        image_max_side: int = 1024,
        max_output_tokens: int = 512,
        score_range: int = 10,
    ) -> None:
        self.client = client
        self.model = model
        self.scorer = VIEScorer(client, model, score_range, image_max_side, max_output_tokens)
        self.score_range = self.scorer.score_range
        self.judge_id = f"{client.transport.name}:{model}:{self.style}"
        self.prompt_version = self.scorer.prompt_version

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of both calls."""
        return self.scorer.usage()

    def score(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[Scores]:
        """Adherence 1 + 0.4·SC and aesthetic 1 + 0.4·PQ, SC / PQ / O and both raw answers
        in ``details``; an error verdict when either call failed."""
        out = []
        for r in self.scorer.score_many(sources, edits, instructions):
            details = r.as_details()
            if r.error is not None:
                for k in ("sc", "pq", "overall"):
                    details[k] = None
                out.append(Scores(0.0, 0.0, error=r.error, details=details))
            else:
                out.append(
                    Scores(to_validator_scale(r.sc), to_validator_scale(r.pq), details=details)
                )
        return out
