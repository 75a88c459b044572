"""A judge circuit breaker: a run whose judge mostly fails stops, and says why.

A judge whose answers do not parse (the wrong model behind the URL, the wrong format,
the wrong ``VIESCORE_RANGE``, a content filter) writes error verdicts, never passes, so
a run would go on spending GPU time on candidates no one can judge. ``JudgeBreaker``
watches every verdict batch the runner accepts, per (stage, judge): when more than
``JUDGE_MAX_ERROR_SHARE`` of ``JUDGE_ERROR_WINDOW`` verdicts are errors, among its first
verdicts (as soon as that is certain) or in any later sliding window of that many, it
raises ``JudgeFailing``, naming the judge, the stage, the error kinds with their counts,
one raw answer (secrets redacted) and the fix. The stage's verdicts not yet committed
are dropped (the candidates they judged are made and judged again by the rerun); what
was committed stays, so a rerun after the fix resumes.

``judge_error_shares`` reads the same figures back from a run's verdict tables for the
summary: verdicts, errors, their share and kinds per judge of each judge stage.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from nhr.backends.api_client import redact
from nhr.engines.base import Done, Link
from nhr.errors import BackendError, DistrustedOutputs
from nhr.records import Verdict

#: The verdict tables of judges (the low-level check is arithmetic, never in error).
JUDGE_TABLES = ("plausibility", "prefilter", "validator", "backward", "composed_validator")
_KIND = re.compile(r"(?:^|: )([a-z][a-z0-9_]*): ")
RAW_CHARS = 300


class JudgeFailing(BackendError, DistrustedOutputs):
    """A judge's error verdicts passed the allowed share: the run stops, and the
    verdicts of that stage not yet committed are dropped, so the rerun judges them."""


def error_kind(error: str) -> str:
    """The kind of a verdict's error text (``"kind: detail"``, or an ensemble's
    ``"member ID: kind: detail"``); ``"other"`` when it names none."""
    match = _KIND.search(error)
    return match.group(1) if match else "other"


def raw_answer(details: str) -> str | None:
    """The first raw model answer kept in a verdict's details (``raw``, ``raw_sc``, ...,
    an ensemble member's too), or None."""
    try:
        obj = json.loads(details or "{}")
    except ValueError:
        return None
    stack = [obj]
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            for k, v in item.items():
                if k.startswith("raw") and isinstance(v, str) and v:
                    return v
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


@dataclass
class _Tally:
    """The last ``window`` verdicts of one judge at one stage: error kinds (None: fine)."""

    window: int
    recent: deque[str | None] = field(init=False)
    errors: int = 0
    seen: int = 0
    raw: str | None = None

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.window)

    def add(self, kind: str | None) -> None:
        if len(self.recent) == self.window and self.recent[0] is not None:
            self.errors -= 1
        self.recent.append(kind)
        self.errors += kind is not None
        self.seen += 1


class JudgeBreaker:
    """Stops a run whose judge errs on more than ``max_share`` of ``window`` verdicts."""

    def __init__(
        self, max_share: float = 0.5, window: int = 50, key_envs: Sequence[str] = ()
    ) -> None:
        if not 0.0 <= max_share <= 1.0 or window < 1:
            raise ValueError(f"max_share {max_share} must be in [0, 1] and window {window} >= 1")
        self.max_share = max_share
        self.window = window
        self.key_envs = tuple(key_envs)  # beside the usual key variables, scrubbed too
        self._tallies: dict[tuple[str, str], _Tally] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> JudgeBreaker:
        """The breaker of ``JUDGE_MAX_ERROR_SHARE`` and ``JUDGE_ERROR_WINDOW``."""
        return cls(
            cfg.validation.judge_max_error_share,
            cfg.validation.judge_error_window,
            (cfg.openai.openai_key_env,),
        )

    def see(self, stage: str, rows: Iterable[Any]) -> None:
        """Count a batch's verdicts (other rows are ignored); raises ``JudgeFailing``
        when a judge's errors pass the share."""
        for row in rows:
            if not isinstance(row, Verdict):
                continue
            key = (stage, row.judge_id)
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(self.window)
            kind = error_kind(row.error) if row.error else None
            tally.add(kind)
            if kind is not None and tally.raw is None:
                tally.raw = raw_answer(row.details) or row.error
            if tally.errors > self.max_share * self.window:
                raise self._failing(stage, row.judge_id, tally)

    def watch(
        self, links: Sequence[Link], observe: Callable[[Done], None] | None = None
    ) -> Callable[[Done], None]:
        """An observer for ``Runner.run_chain`` that counts every verdict batch of the
        chain's links, then calls ``observe`` (the caller's own, if any)."""
        names = [link.stage.name for link in links]

        def watched(done: Done) -> None:
            self.see(names[done.link], done.outputs)
            if observe is not None:
                observe(done)

        return watched

    def _failing(self, stage: str, judge_id: str, tally: _Tally) -> JudgeFailing:
        kinds = Counter(k for k in tally.recent if k is not None)
        counted = ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())
        where = (
            f"its first {tally.seen}"
            if tally.seen <= self.window
            else f"its last {self.window} (of {tally.seen})"
        )
        keys = [os.environ.get(name, "") for name in self.key_envs]
        raw = redact(tally.raw or "", keys)[:RAW_CHARS]
        return JudgeFailing(
            f"judge {judge_id} at stage {stage}: {tally.errors} of {where} verdicts are "
            f"errors, more than JUDGE_MAX_ERROR_SHARE={self.max_share:g} of "
            f"JUDGE_ERROR_WINDOW={self.window} ({counted}); one raw answer: {raw!r}",
            "check the model behind the judge (its *_MODEL and base URL), that it answers "
            "in the judge's format (VALIDATOR: openai-viescore / gemini-viescore expect "
            '{"reasoning", "score": [a, b]}, openai-imgedit labelled 1-5 lines) and '
            "VIESCORE_RANGE (25 for EditScore models, 10 for VIEScore prompts); then rerun: "
            "committed rows are kept and the run resumes (JUDGE_MAX_ERROR_SHARE=1 never stops)",
        )


def judge_error_rows(tables: Any) -> list[dict[str, Any]]:
    """``judge_error_shares`` as flat rows (stage, judge, verdicts, errors, share, kinds),
    for a table in a notebook."""
    return [
        {"stage": stage, "judge": judge_id, **figures}
        for stage, per in judge_error_shares(tables).items()
        for judge_id, figures in per.items()
    ]


def judge_error_shares(tables: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Per judge stage that ran, per judge id: ``verdicts``, ``errors``, ``share`` and
    ``kinds`` (error counts by kind), from the verdict tables."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in JUDGE_TABLES:
        if not tables.exists(name):
            continue
        per: dict[str, dict[str, Any]] = {}
        for batch in tables.stream(name, ["judge_id", "error"]):  # a batch at a time
            for item in pc.value_counts(batch.column("judge_id")).to_pylist():  # in order
                entry = per.setdefault(
                    item["values"], {"verdicts": 0, "errors": 0, "kinds": Counter()}
                )
                entry["verdicts"] += item["counts"]
            failed = batch.filter(
                pc.fill_null(pc.greater(pc.utf8_length(batch["error"]), 0), False)
            )
            for judge_id, error in zip(
                failed.column("judge_id").to_pylist(),
                failed.column("error").to_pylist(),
                strict=True,
            ):
                per[judge_id]["errors"] += 1
                per[judge_id]["kinds"][error_kind(error)] += 1
        out[name] = {
            j: {
                "verdicts": e["verdicts"],
                "errors": e["errors"],
                "share": round(e["errors"] / e["verdicts"], 4) if e["verdicts"] else 0.0,
                "kinds": dict(e["kinds"].most_common()),
            }
            for j, e in per.items()
        }
    return out
