"""An ensemble validator: several judges score every candidate, combined by mean or min.

Members are named by specs (``JUDGE_ENSEMBLE_MEMBERS``): a validator backend name
(``synthetic``, ``gemini``, ``openai``, ``openai-viescore``, ...) or ``NAME:MODEL`` to
give that member its own model id (``openai-viescore:EditScore/EditScore-7B``); a VIEScore
member also takes its score range, ``openai-viescore:EditScore/EditScore-7B,range=25``
(else ``VIESCORE_RANGE``); the synthetic judge takes ``synthetic:noise=X`` instead. Per
dimension the members' scores are combined by ``mean`` or ``min``. The pass rule says
what must hold besides the validator's threshold on the combined scores:

- ``combined``: nothing more (with ``min`` this is "every member passes");
- ``all``: every member passes on its own (both scores >= threshold);
- ``majority``: more than half of the members pass on their own.

A vote that does not carry fails the verdict with reason ``ensemble_vote``. A member's
error makes the ensemble's verdict an error (never a pass). Every member's scores and
details are kept in the verdict's ``details``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from nhr.backends.base import Judge, PrefilterAnswer, Scores, YesNo
from nhr.errors import BackendError, ConfigError

COMBINE = ("mean", "min")
PASS_RULES = ("combined", "all", "majority")
#: Remote judge backends whose model a spec may override: name -> (transport, style).
REMOTE = {
    "gemini": ("gemini", ""),
    "openai": ("openai", ""),
    "gemini-viescore": ("gemini", "viescore"),
    "openai-viescore": ("openai", "viescore"),
    "openai-imgedit": ("openai", "imgedit"),
}


class EnsembleJudge:
    """Several judges as one hard validator (see the module docstring)."""

    def __init__(
        self,
        members: list[Judge],
        combine: str = "mean",
        pass_rule: str = "combined",
        threshold: float = 4.7,
    ) -> None:
        if not members:
            raise ConfigError("the judge ensemble has no members", "list JUDGE_ENSEMBLE_MEMBERS")
        if combine not in COMBINE or pass_rule not in PASS_RULES:
            raise ConfigError(
                f"ensemble combine={combine!r} / pass rule={pass_rule!r}",
                f"use combine one of {COMBINE} and a pass rule one of {PASS_RULES}",
            )
        self.members = members
        self.combine = combine
        self.pass_rule = pass_rule
        self.threshold = threshold
        ids = ",".join(m.judge_id for m in members)
        self.judge_id = f"ensemble-{combine}-{pass_rule}({ids})"
        self.prompt_version = "+".join(m.prompt_version for m in members)

    def usage(self) -> dict[str, float]:
        """The members' usage counters, summed."""
        total: dict[str, float] = {}
        for m in self.members:
            if hasattr(m, "usage"):
                for k, v in m.usage().items():
                    total[k] = total.get(k, 0.0) + v
        return total

    def _passes(self, s: Scores) -> bool:
        return s.error is None and min(s.adherence, s.aesthetic) >= self.threshold

    def score(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[Scores]:
        """Every member's scores, combined; a member error is the ensemble's error."""
        per_member = [m.score(sources, edits, instructions) for m in self.members]
        reduce: Callable[[list[float]], float] = (
            (lambda xs: float(np.mean(xs))) if self.combine == "mean" else min
        )
        out = []
        for i in range(len(sources)):
            answers = [scores[i] for scores in per_member]
            kept = [
                {
                    "judge_id": m.judge_id,
                    "adherence": a.adherence,
                    "aesthetic": a.aesthetic,
                    "passed": self._passes(a),
                    "error": a.error,
                    "details": a.details,
                }
                for m, a in zip(self.members, answers, strict=True)
            ]
            votes = sum(k["passed"] for k in kept)
            details: dict[str, Any] = {
                "combine": self.combine,
                "pass_rule": self.pass_rule,
                "votes": votes,
                "members": kept,
            }
            failed = [(m, a) for m, a in zip(self.members, answers, strict=True) if a.error]
            if failed:
                m, a = failed[0]
                out.append(
                    Scores(0.0, 0.0, error=f"member {m.judge_id}: {a.error}", details=details)
                )
                continue
            need = {"combined": 0, "all": len(kept), "majority": len(kept) // 2 + 1}
            veto = "ensemble_vote" if votes < need[self.pass_rule] else None
            out.append(
                Scores(
                    round(reduce([a.adherence for a in answers]), 4),
                    round(reduce([a.aesthetic for a in answers]), 4),
                    details=details,
                    veto=veto,
                )
            )
        return out

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Not a gate: the ensemble serves the hard validator only."""
        raise BackendError("the judge ensemble is a hard validator", "use it as VALIDATOR only")

    def prefilter(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[PrefilterAnswer]:
        """Not a pre-filter: the ensemble serves the hard validator only."""
        raise BackendError("the judge ensemble is a hard validator", "use it as VALIDATOR only")


def build_judge(ctx: Any, spec: str, factories: Mapping[str, Callable[[Any], Any]]) -> Any:
    """The judge a spec names (``NAME``, ``NAME:MODEL``, ``synthetic:noise=X``), built
    with the validator role's ``factories`` where the spec adds nothing."""
    name, _, arg = spec.strip().partition(":")
    if name == "ensemble":
        raise ConfigError(f"judge spec {spec!r} nests an ensemble", "list plain judges")
    if name not in factories:
        raise ConfigError(
            f"unknown judge {spec!r}", f"use a validator backend: {', '.join(factories)}"
        )
    if not arg:
        return factories[name](ctx)
    if name == "synthetic":
        key, _, value = arg.partition("=")
        try:
            noise = float(value)
        except ValueError:
            noise = -1.0
        if key != "noise" or not 0.0 <= noise <= 3.0:
            raise ConfigError(f"judge spec {spec!r}", "write synthetic:noise=X with X in [0, 3]")
        from nhr.backends.synthetic.judge import SyntheticJudge

        return SyntheticJudge(noise=noise)
    if name not in REMOTE:
        raise ConfigError(f"judge spec {spec!r}: {name} takes no model", f"write just {name}")
    transport, style = REMOTE[name]
    model, options = _model_and_options(spec, arg)
    if not style:
        if options:
            raise ConfigError(f"judge spec {spec!r}: {name} takes no options", "give a model")
        from nhr.backends.api_roles import RemoteJudge, make_client

        client = ctx.shared(
            f"api-client:{transport}", lambda: make_client(ctx.cfg, ctx.run_dir, transport)
        )
        return RemoteJudge(
            client,
            model,
            "validator",
            ctx.cfg.api.api_image_max_side,
            ctx.cfg.api.api_max_output_tokens,
        )
    return build_style(ctx, transport, style, model, options)


def _model_and_options(spec: str, arg: str) -> tuple[str, dict[str, str]]:
    """(model, options) of a spec's part after the colon: comma-separated items, a
    ``key=value`` item an option, the one other item the model id ('' when none)."""
    models, options = [], {}
    for item in (x.strip() for x in arg.split(",")):
        key, eq, value = item.partition("=")
        if eq:
            options[key.strip()] = value.strip()
        elif item:
            models.append(item)
    if len(models) > 1:
        raise ConfigError(f"judge spec {spec!r} names {len(models)} models", "name one")
    return (models[0] if models else ""), options


def build_style(
    ctx: Any, transport: str, style: str, model: str = "", options: dict[str, str] | None = None
) -> Any:
    """A judge format (``viescore`` or ``imgedit``) on a remote transport; ``options`` are
    a spec's ``key=value`` items (``range`` for VIEScore, else ``VIESCORE_RANGE``)."""
    from nhr.backends.judge_format import build_format_judge

    options = dict(options or {})
    if style == "viescore":
        from nhr.backends.judge_viescore import VIEScoreJudge

        score_range = ctx.cfg.validation.viescore_range
        if "range" in options:
            text = options.pop("range")
            if not text.isdigit():
                raise ConfigError(f"VIEScore range {text!r}", "write range=N, e.g. range=25")
            score_range = int(text)
        _no_options(style, options)
        return build_format_judge(ctx, transport, VIEScoreJudge, model, score_range=score_range)
    from nhr.backends.judge_imgedit import ImgEditJudge

    _no_options(style, options)
    return build_format_judge(ctx, transport, ImgEditJudge, model)


def _no_options(style: str, options: dict[str, str]) -> None:
    """Refuse spec options a judge format does not know."""
    if options:
        known = "range=N" if style == "viescore" else "none"
        raise ConfigError(
            f"judge spec option(s) {', '.join(sorted(options))} for {style}",
            f"{style} takes: {known}",
        )


def build_ensemble(ctx: Any, factories: Mapping[str, Callable[[Any], Any]]) -> EnsembleJudge:
    """The ensemble the config describes."""
    cfg = ctx.cfg
    members = [build_judge(ctx, spec, factories) for spec in cfg.validation.judge_ensemble_members]
    return EnsembleJudge(
        members,
        cfg.validation.judge_ensemble_combine,
        cfg.validation.judge_ensemble_pass,
        cfg.validation.threshold,
    )
