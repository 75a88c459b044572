"""The posterior stop of the adaptive search: close a (source, instruction) once its failed
seeds make it unlikely that the editor can do it at all.

Where passes cluster by group (an editor finds some pairs easy and others nearly
impossible), a group's own failures are the evidence that it is one of the impossible
ones; but a failure weighs by the setting it ran at: a seed at a guidance or step count
where few edits pass says little, one at the run's best setting says much. The rule is
a two-kind model fitted on the run's own verdicts (empirical Bayes):

- a group is one the editor can do (prior ``π``) or not (never passes);
- a doable group's candidate passes the hard validator with chance ``recall`` at the
  best setting, and ``recall · q_s`` at a setting ``s`` whose pass rate is ``q_s`` times
  the best's;
- the pass rates by setting (guidance, steps) come from the calibration jobs (the first
  of the first round, in the grid's priority order), as guidance and step effects
  multiplied (``setting_rates``); so ``π = rate_best / recall``.

After failures at settings ``s_1 … s_f`` the chance that the group is doable is
``π L / (π L + 1 − π)`` with ``L = Π (1 − recall · q_si)``; the group closes once that
falls below ``below · π``: its next seed is worth less than ``below`` of a fresh group's
first (the opportunity cost of a generation). Only the group's own verdicts and the
calibration jobs' (a fixed set: no other group's progress, no timing) decide, so a
streamed run, a run round by round and a resumed run close the same groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

Setting = tuple[float, int]  # a job's (guidance, steps)


def setting_rates(
    tried: Mapping[Setting, int], passed: Mapping[Setting, int]
) -> dict[Setting, float]:
    """Pass rate of each setting tried, as the product of its guidance's and its step
    count's rates over the overall rate (each shrunk toward the overall rate by two
    pseudo-jobs): fewer parameters than a rate per cell, so less noise."""
    total_t, total_p = sum(tried.values()), sum(passed.get(s, 0) for s in tried)
    overall = (total_p + 1) / (total_t + 2)

    def margin(i: int) -> dict[Any, float]:
        t: dict[Any, int] = {}
        p: dict[Any, int] = {}
        for s, n in tried.items():
            t[s[i]] = t.get(s[i], 0) + n
            p[s[i]] = p.get(s[i], 0) + passed.get(s, 0)
        return {v: (p[v] + 2 * overall) / (t[v] + 2) for v in t}

    by_guidance, by_steps = margin(0), margin(1)
    return {s: by_guidance[s[0]] * by_steps[s[1]] / overall for s in tried}


def doable_share(prior: float, recall: float, weights: np.ndarray, fails: np.ndarray) -> np.ndarray:
    """Posterior chance over prior, per group (rows of ``fails``: failures at each
    setting, whose pass rates relative to the best are ``weights``), that the group is
    one the editor can do (module docstring). 1 where nothing failed or ``prior`` ≥ 1."""
    if prior >= 1.0:
        return np.ones(len(fails))
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-np.minimum(recall * weights, 1.0))
    with np.errstate(invalid="ignore"):
        log_l = np.where(fails > 0, fails * log_miss, 0.0).sum(axis=1)
    lik = np.exp(log_l)
    return lik / (prior * lik + 1.0 - prior)


class PosteriorStop:
    """Per group its failures by setting; the calibration jobs' verdicts by setting;
    once every calibration job is decided (``fix``), which groups to close."""

    def __init__(self, n_groups: int, below: float, recall: float) -> None:
        self.below = below
        self.recall = recall
        self.n_groups = n_groups
        self.settings: dict[Setting, int] = {}  # setting -> its column in ``fails``
        self.fails = np.zeros((n_groups, 0), dtype=np.int16)
        self.tried: dict[Setting, int] = {}
        self.passed: dict[Setting, int] = {}
        self.calibration_jobs = 0  # calibration jobs issued
        self.calibration_left = 0  # … of them not yet decided
        self.prior: float | None = None
        self.weights = np.zeros(0)

    @property
    def fixed(self) -> bool:
        """Whether the rates are fixed (every calibration job decided)."""
        return self.prior is not None

    def _column(self, setting: Setting) -> int:
        if setting not in self.settings:
            self.settings[setting] = len(self.settings)
            self.fails = np.hstack([self.fails, np.zeros((self.n_groups, 1), dtype=np.int16)])
            if self.fixed:  # a setting no calibration job tried: the overall rate
                self.weights = np.append(self.weights, self._unseen)
        return self.settings[setting]

    def issue_calibration(self, n: int) -> None:
        """``n`` more calibration jobs issued."""
        self.calibration_jobs += n
        self.calibration_left += n

    def observe(
        self, g: int, setting: Setting, calibration: bool, made: bool, passed: bool, judged: bool
    ) -> bool:
        """One job of group ``g`` decided: a failure counts where a candidate was made
        and judged (a judge error is no evidence); a calibration job counts toward the
        rates. Returns whether this verdict fixed the rates."""
        if made and judged and not passed:
            column = self._column(setting)  # may widen ``fails``: take it first
            self.fails[g, column] += 1
        if not calibration:
            return False
        self.tried[setting] = self.tried.get(setting, 0) + int(made and judged)
        self.passed[setting] = self.passed.get(setting, 0) + int(passed)
        self.calibration_left -= 1
        if self.calibration_left == 0 and not self.fixed:
            self.fix()
            return True
        return False

    def fix(self) -> None:
        """Fix the rates by setting, the prior and each setting's weight."""
        rates = setting_rates(self.tried, self.passed) if self.tried else {}
        best = max(rates.values(), default=0.0)
        overall = (sum(self.passed.values()) + 1) / (sum(self.tried.values()) + 2)
        self._unseen = overall / best if best else 1.0
        for s in self.settings:
            rates.setdefault(s, overall)
        self.rates = rates
        self.prior = min(1.0, best / self.recall) if best else 1.0
        self.weights = np.array([min(1.0, rates[s] / best) if best else 1.0 for s in self.settings])

    def stops(self, groups: np.ndarray) -> np.ndarray:
        """Per group of ``groups``: whether the rule closes it (False before ``fix``)."""
        if not self.fixed or not self.below:
            return np.zeros(len(groups), dtype=bool)
        share = doable_share(self.prior or 1.0, self.recall, self.weights, self.fails[groups])
        return share < self.below

    def describe(self) -> dict[str, Any]:
        """The fitted figures, for the stats."""
        out: dict[str, Any] = {"below": self.below, "recall": self.recall}
        if self.fixed:
            best = max(self.rates.values(), default=0.0)
            out.update(
                prior=round(float(self.prior or 0.0), 4),
                calibration_jobs=self.calibration_jobs,
                rates={f"{g:g}/{s}": round(r, 4) for (g, s), r in sorted(self.rates.items())},
                best_rate=round(best, 4),
            )
        return out
