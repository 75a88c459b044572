"""The mining loop: edit jobs through the editor, the filters and the hard validator, in
rounds of seeds per (source, instruction).

With ``SEARCH grid`` (the paper) there is one round holding every seed of every group
(source, instruction): the rows of the plain N×k×M grid. With ``SEARCH adaptive`` a
group gets ``SEARCH_FIRST_SEEDS`` seeds, then ``SEARCH_ROUND_SEEDS`` more per round up to
``M_EDIT_SEEDS``, and closes once ``SEARCH_PASSES`` of its candidates passed the hard
validator, or as hopeless once ``SEARCH_HOPELESS_AFTER`` of them scored and every score is
below ``SEARCH_HOPELESS_BELOW``. A round is one chain (editor → enabled filters →
validator) over the round's jobs of every open group; its jobs are the grid's jobs (same
id, seed and steps), drawn in the grid's priority order, so a job cap takes a uniform
sample of the work still open.

Every decision reads only committed verdicts of earlier rounds, and a round's jobs are a
function of those, so a run killed anywhere and rerun makes the rows of an uninterrupted
run (without an editor budget in seconds, where timing decides what fits, as in the
grid). The loop calls only ``runner.run_chain`` / ``runner.run`` and reads tables: it
runs on any engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.engines.base import Link
from nhr.runner import Runner, StageResult
from nhr.stages.edits import EditPlan
from nhr.tables import FILTERS, RunTables, positions

STATS = "mining"  # stats/mining.json
OPEN, PASSED, HOPELESS, EXHAUSTED = 0, 1, 2, 3
STATE_NAMES = {OPEN: "open", PASSED: "passed", HOPELESS: "hopeless", EXHAUSTED: "exhausted"}
_CANDIDATE = r"-i(?P<j>\d+)-e(?P<m>\d+)$"  # the tail of a candidate id: instruction, seed


@dataclass(frozen=True)
class SearchRule:
    """How the seeds of a (source, instruction) are searched: the ``search`` config
    block, with M (``m_seeds``) and the guidance values of the ``edits`` block."""

    search: str = "grid"
    m_seeds: int = 5
    first_seeds: int = 1
    round_seeds: int = 1
    passes: int = 1
    hopeless_after: int = 3
    hopeless_below: float = 2.0
    guidance: str = "drawn"
    guidances: tuple[float, ...] = (2.5,)

    @classmethod
    def from_config(cls, cfg: Any) -> SearchRule:
        """The rule of a ``PipelineConfig``."""
        s = cfg.search
        return cls(
            search=s.search,
            m_seeds=cfg.edits.m_edit_seeds,
            first_seeds=s.search_first_seeds,
            round_seeds=s.search_round_seeds,
            passes=s.search_passes,
            hopeless_after=s.search_hopeless_after,
            hopeless_below=s.search_hopeless_below,
            guidance=s.search_guidance,
            guidances=tuple(cfg.edits.edit_guidance),
        )

    @property
    def adaptive(self) -> bool:
        """Whether seeds come in rounds."""
        return self.search == "adaptive"

    def rounds(self) -> list[tuple[int, int]]:
        """The seed range [lo, hi) of each round."""
        if not self.adaptive:
            return [(0, self.m_seeds)]
        out = [(0, min(self.first_seeds, self.m_seeds))]
        while out[-1][1] < self.m_seeds:
            lo = out[-1][1]
            out.append((lo, min(lo + self.round_seeds, self.m_seeds)))
        return out

    def round_of(self, m: np.ndarray) -> np.ndarray:
        """The round of each seed index."""
        bounds = np.array([hi for _, hi in self.rounds()], dtype=np.int64)
        return np.searchsorted(bounds, np.asarray(m, dtype=np.int64), side="right")

    def describe(self) -> dict[str, Any]:
        """The rule's parameters, for the stats."""
        out: dict[str, Any] = {"search": self.search, "m_seeds": self.m_seeds}
        if self.adaptive:
            out.update(
                first_seeds=self.first_seeds,
                round_seeds=self.round_seeds,
                passes=self.passes,
                hopeless_after=self.hopeless_after,
                hopeless_below=self.hopeless_below,
                guidance=self.guidance,
            )
        return out


@dataclass
class Evidence:
    """What the tables say about the candidates of the rounds so far, one entry each:
    group index, round, guidance, whether the validator passed it, and its score
    (NaN where no judge scored it: a judge error, or not judged yet)."""

    group: np.ndarray
    round: np.ndarray
    guidance: np.ndarray
    passed: np.ndarray
    score: np.ndarray


def _verdicts(tables: RunTables, name: str, ids: pa.Array) -> dict[str, np.ndarray] | None:
    """A verdict table's ``present`` / ``passed`` / ``score`` / ``error`` per candidate of
    ``ids`` (None when the filter is off)."""
    if name not in tables.enabled:
        return None
    v = tables.read(name, ["subject_id", "passed", "reason", "adherence", "aesthetic"])
    pos = positions(ids, v.column("subject_id"))
    present = pos >= 0
    at = np.maximum(pos, 0)

    def col(values: Any, fill: Any) -> np.ndarray:
        arr = pc.fill_null(values, fill).to_numpy(zero_copy_only=False)
        return arr[at] if len(arr) else np.full(len(pos), fill)

    adh = col(v.column("adherence"), float("nan")).astype(np.float64)
    aes = col(v.column("aesthetic"), float("nan")).astype(np.float64)
    return {
        "present": present,
        "passed": present & col(v.column("passed"), False).astype(bool),
        "score": np.minimum(adh, aes),
        "error": present & (col(v.column("reason"), "") == "judge_error"),
    }


def read_evidence(tables: RunTables, plan: EditPlan, rule: SearchRule, last: int) -> Evidence:
    """The evidence of every candidate of rounds ``<= last``: a candidate's score is
    min(adherence, aesthetic) from the validator if it got there, else from the
    pre-filter that dropped it; a low-level drop scores 0."""
    cand = tables.read("candidates", ["candidate_id", "source_id", "guidance"])
    ids = cand.column("candidate_id")
    parts = pc.extract_regex(ids, _CANDIDATE)
    j = pc.cast(pc.struct_field(parts, "j"), pa.int64()).to_numpy(zero_copy_only=False)
    m = pc.cast(pc.struct_field(parts, "m"), pa.int64()).to_numpy(zero_copy_only=False)
    rounds = rule.round_of(m)
    keep = np.flatnonzero(rounds <= last)
    take = pa.array(keep, pa.int64())
    ids = ids.take(take)
    group = plan.group_index(cand.column("source_id").take(take), j[keep])
    guidance = cand.column("guidance").take(take).to_numpy().astype(np.float64)
    n = len(keep)
    passed = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan)
    decided = np.zeros(n, dtype=bool)
    val = _verdicts(tables, "validator", ids)
    low = _verdicts(tables, "lowlevel", ids)
    pre = _verdicts(tables, "prefilter", ids)
    if val is not None:
        passed = val["passed"]
        score = np.where(val["present"] & ~val["error"], val["score"], np.nan)
        decided = val["present"]
    if low is not None:
        dropped = ~decided & low["present"] & ~low["passed"]
        score = np.where(dropped, 0.0, score)
        decided |= dropped
    if pre is not None:
        dropped = ~decided & pre["present"] & ~pre["passed"]
        score = np.where(dropped & ~pre["error"], pre["score"], score)
    return Evidence(
        group[group >= 0],
        rounds[keep][group >= 0],
        guidance[group >= 0],
        passed[group >= 0],
        score[group >= 0],
    )


@dataclass
class Groups:
    """The state of every group after some rounds: candidates scored, validator passes,
    best score, and open / passed / hopeless / exhausted."""

    scored: np.ndarray
    passes: np.ndarray
    best: np.ndarray
    state: np.ndarray

    @classmethod
    def judge(cls, evidence: Evidence, n_groups: int, rule: SearchRule, seeds_done: int) -> Groups:
        """Close groups by the rule, given the evidence of the rounds whose seeds end at
        ``seeds_done``."""
        g = evidence.group
        scored = np.bincount(g[~np.isnan(evidence.score)], minlength=n_groups)
        passes = np.bincount(g[evidence.passed], minlength=n_groups)
        best = np.full(n_groups, -np.inf)
        ok = ~np.isnan(evidence.score)
        np.maximum.at(best, g[ok], evidence.score[ok])
        state = np.full(n_groups, OPEN, dtype=np.int8)
        if rule.adaptive and rule.hopeless_after:
            hopeless = (scored >= rule.hopeless_after) & (best < rule.hopeless_below)
            state[hopeless] = HOPELESS
        state[passes >= (rule.passes if rule.adaptive else 1)] = PASSED
        if seeds_done >= rule.m_seeds:
            state[state == OPEN] = EXHAUSTED
        return cls(scored, passes, best, state)

    def counts(self) -> dict[str, int]:
        """Groups by state."""
        return {name: int((self.state == s).sum()) for s, name in STATE_NAMES.items()}


def best_guidance(evidence: Evidence, guidances: Sequence[float]) -> float:
    """The guidance value with the highest pass rate so far (add-one smoothed; ties: the
    first listed)."""
    rates = []
    for g in guidances:
        at = evidence.guidance == g
        rates.append((evidence.passed[at].sum() + 1) / (at.sum() + 2))
    return float(guidances[int(np.argmax(rates))])


@dataclass
class MiningResult:
    """A mining loop's stage results (the last call of each link) and its record."""

    candidates: StageResult
    filters: list[StageResult] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def run_links(
    runner: Runner,
    links: Sequence[Link],
    inputs: Any,
    budget_seconds: float,
    extra_stats: dict[str, Any] | None,
) -> StageResult:
    """Run a chain through the runner; the editor's result (``extra_stats`` go to the
    editor's table)."""
    extra = [extra_stats] + [None] * (len(links) - 1)
    return runner.run_chain(list(links), inputs, budget_seconds, extra)[0]


def filter_inputs(tables: RunTables, name: str, ids: pa.Array) -> pa.Table:
    """The candidates of ``ids`` that reach filter ``name``: the survivors of the enabled
    filters before it."""
    i = FILTERS.index(name)
    table = tables.survivors(FILTERS[i - 1]) if i else tables.read("candidates")
    return table.filter(pc.is_in(table.column("candidate_id"), value_set=ids))


class MiningLoop:
    """Runs the rounds of a search over ``plan`` with ``links`` (the editor's first, then
    the enabled filters' in pipeline order) and records ``stats/mining.json``."""

    def __init__(
        self,
        runner: Runner,
        tables: RunTables,
        plan: EditPlan,
        links: Sequence[Link],
        rule: SearchRule,
        budget_seconds: float = 0.0,
        extra_stats: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.runner = runner
        self.tables = tables
        self.plan = plan
        self.links = list(links)
        self.rule = rule
        self.budget_seconds = budget_seconds
        self.extra_stats = extra_stats or {}
        self.clock = clock

    def run(self) -> MiningResult:
        """Every round until no group is open, the cap is spent or the budget is."""
        store = self.tables.store
        started = self.clock()
        before = store.read_stats(STATS) or {}
        if before.get("rule") != self.rule.describe():
            before = {}
        wall_before = float(before.get("wall_seconds", 0.0))
        n_groups = self.plan.groups
        open_now = np.ones(n_groups, dtype=bool)
        left = self.plan.max_jobs
        rounds: list[dict[str, Any]] = []
        totals = {"rows_in": 0, "resumed_rows": 0, "processed_rows": 0, "not_scheduled": 0}
        worked = False
        result: StageResult | None = None
        groups: Groups | None = None
        stop = "done"
        for r, (lo, hi) in enumerate(self.rule.rounds()):
            guidance = None
            if r and self.rule.adaptive and self.rule.guidance == "best":
                guidance = best_guidance(
                    read_evidence(self.tables, self.plan, self.rule, r - 1), self.rule.guidances
                )
            by_group = None if guidance is None else np.full(n_groups, guidance)
            wave = self.plan.part((lo, hi), None if r == 0 else open_now, max(left, 0), by_group)
            jobs = len(wave)
            extra = {**self.extra_stats, "search": self.rule.search, "round": r}
            result = run_links(self.runner, self.links, wave, self.budget_seconds, extra)
            for key in totals:
                totals[key] += int(result.stats.get(key, 0))
            worked |= bool(result.stats.get("processed_rows"))
            worked |= self._catch_up(r)
            evidence = read_evidence(self.tables, self.plan, self.rule, r)
            groups = Groups.judge(evidence, n_groups, self.rule, hi)
            was_open = open_now
            open_now = groups.state == OPEN
            in_round = evidence.round == r
            rounds.append(
                {
                    "round": r,
                    "seeds": [lo, hi],
                    "jobs": jobs,
                    "groups_open": int(was_open.sum()),
                    "candidates": int(in_round.sum()),
                    "passed": int(evidence.passed[in_round].sum()),
                    "closed_passed": int((was_open & (groups.state == PASSED)).sum()),
                    "closed_hopeless": int((was_open & (groups.state == HOPELESS)).sum()),
                    "guidance": guidance,
                }
            )
            if self.plan.max_jobs:
                left -= jobs
            elapsed = (self.clock() - started) if worked else 0.0
            self._record(rounds, groups, wall_before + elapsed, stop="running")
            if result.stats.get("not_scheduled"):
                stop = "budget"
                break
            if self.plan.max_jobs and left <= 0:
                stop = "cap" if open_now.any() else "done"
                break
            if not open_now.any():
                break
        assert result is not None and groups is not None
        elapsed = (self.clock() - started) if worked else 0.0
        stats = self._record(rounds, groups, wall_before + elapsed, stop)
        candidates = dict(result.stats)
        candidates.update(totals)
        candidates["rounds"] = len(rounds)
        candidates.pop("round", None)
        store.write_stats("candidates", candidates)
        return MiningResult(StageResult("candidates", candidates), [], stats)

    def _catch_up(self, r: int) -> bool:
        """Run every filter link over the candidates of round ``r`` that reach it (a
        chain that ran all of them finds nothing to do; a crashed one is finished
        here). Returns whether any row was processed."""
        cand = self.tables.read("candidates", ["candidate_id"]).column("candidate_id")
        m = pc.cast(pc.struct_field(pc.extract_regex(cand, _CANDIDATE), "m"), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        ids = cand.filter(pa.array(self.rule.round_of(m) == r))
        worked = False
        for link in self.links[1:]:
            inputs = filter_inputs(self.tables, link.stage.name, ids)
            res = self.runner.run(link.stage, inputs)
            worked |= bool(res.stats.get("processed_rows"))
        return worked

    def _record(
        self, rounds: list[dict[str, Any]], groups: Groups, wall: float, stop: str
    ) -> dict[str, Any]:
        """Write ``stats/mining.json`` and return it."""
        cand = self.tables.store.read_stats("candidates") or {}
        stats = {
            "stage": STATS,
            "search": self.rule.search,
            "rule": self.rule.describe(),
            "rounds": rounds,
            "groups": len(groups.state),
            "groups_by_state": groups.counts(),
            "jobs": int(sum(r["jobs"] for r in rounds)),
            "grid_jobs": int(self.extra_stats.get("grid_jobs", 0)),
            "candidates": int(sum(r["candidates"] for r in rounds)),
            "stopped_by": stop,
            "wall_seconds": round(wall, 3),
            "editor_busy_seconds": round(float(cand.get("seconds", 0.0)), 3),
        }
        self.tables.store.write_stats(STATS, stats)
        return stats
