"""The mining loop: edit jobs through the editor, the filters and the hard validator, in
rounds of seeds per (source, instruction).

With ``SEARCH grid`` (the paper) there is one round holding every seed of every group
(source, instruction): the rows of the plain N×k×M grid. With ``SEARCH adaptive`` a
group gets ``SEARCH_FIRST_SEEDS`` seeds, then ``SEARCH_ROUND_SEEDS`` more per round up to
``M_EDIT_SEEDS``, and closes once ``SEARCH_PASSES`` of its candidates passed the hard
validator, or as hopeless once ``SEARCH_HOPELESS_AFTER`` of them scored and every score is
below ``SEARCH_HOPELESS_BELOW``. With ``SEARCH_GUIDANCE best`` the later rounds run at the
guidance that passed most often among the first ``SEARCH_GUIDANCE_SHARE`` of the first
round's jobs. A group's jobs are the grid's jobs (same id, seed and steps).

Without a job cap or an editor budget the search is one streamed chain (``SeedFeed``):
the first round's jobs in the grid's priority order, then each group's next round as
soon as its own candidates are judged, so the editor keeps generating while the judges
score and no round waits for the slowest group. With ``MAX_EDIT_JOBS`` or
``EDIT_BUDGET_SECONDS`` it runs one chain per round, each round's jobs drawn in priority
order from the groups still open, so wherever the cap or the budget binds it has taken
a uniform sample of the open work. Both decide from the same verdicts by the same rule
and make the same rows.

Every decision reads verdicts only (committed ones, on a rerun), never timing, so a run
killed anywhere and rerun makes the rows of an uninterrupted run (without an editor
budget in seconds, where timing decides what fits, as in the grid). The loop calls only
``runner.run_chain`` / ``runner.run`` and reads tables: it runs on any engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.engines.base import Done, Link
from nhr.records import Verdict
from nhr.runner import PAUSE, Runner, StageResult
from nhr.stages.edits import EditPlan
from nhr.tables import FILTERS, RunTables, flat, positions

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
    guidance_share: float = 1.0

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
            guidance_share=s.search_guidance_share,
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
            if self.guidance == "best":
                out["guidance_share"] = self.guidance_share
        return out

    @property
    def chooses_guidance(self) -> bool:
        """Whether rounds after the first run at a guidance chosen from the first's."""
        return self.adaptive and self.guidance == "best" and len(self.rounds()) > 1

    def calibration_jobs(self, first_round_jobs: int) -> int:
        """How many of the first round's jobs (the first by priority) choose the guidance
        of the later rounds (0 where no guidance is chosen)."""
        if not self.chooses_guidance or not first_round_jobs:
            return 0
        return max(1, math.ceil(self.guidance_share * first_round_jobs))

    def close(
        self, scored: np.ndarray, passes: np.ndarray, best: np.ndarray, seeds_done: Any
    ) -> np.ndarray:
        """The state of groups with these counts after their first ``seeds_done`` seeds:
        passed, hopeless, exhausted (every seed made) or open."""
        state = np.full(len(scored), OPEN, dtype=np.int8)
        if self.adaptive and self.hopeless_after:
            state[(scored >= self.hopeless_after) & (best < self.hopeless_below)] = HOPELESS
        state[passes >= (self.passes if self.adaptive else 1)] = PASSED
        state[(state == OPEN) & (np.asarray(seeds_done) >= self.m_seeds)] = EXHAUSTED
        return state


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
    ids: pa.Array | None = None


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


def decide(tables: RunTables, ids: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per candidate of ``ids``: whether a verdict decides it, whether the validator
    passed it, and its score: min(adherence, aesthetic) from the validator if it got
    there, else from the pre-filter that dropped it (NaN for a judge error or no
    verdict); a low-level drop scores 0."""
    n = len(ids)
    decided = np.zeros(n, dtype=bool)
    passed = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan)
    val = _verdicts(tables, "validator", ids)
    if val is not None:
        decided = val["present"].copy()
        passed = val["passed"]
        score = np.where(val["present"] & ~val["error"], val["score"], np.nan)
    low = _verdicts(tables, "lowlevel", ids)
    if low is not None:
        dropped = ~decided & low["present"] & ~low["passed"]
        score = np.where(dropped, 0.0, score)
        decided |= dropped
    pre = _verdicts(tables, "prefilter", ids)
    if pre is not None:
        dropped = ~decided & pre["present"] & ~pre["passed"]
        score = np.where(dropped & ~pre["error"], pre["score"], score)
        decided |= dropped
    return decided, passed, score


def read_evidence(tables: RunTables, plan: EditPlan, rule: SearchRule, last: int) -> Evidence:
    """The evidence of every candidate of rounds ``<= last``, scored by ``decide``."""
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
    _, passed, score = decide(tables, ids)
    known = group >= 0
    return Evidence(
        group[known],
        rounds[keep][known],
        guidance[known],
        passed[known],
        score[known],
        ids.filter(pa.array(known)),
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
        state = rule.close(scored, passes, best, seeds_done)
        return cls(scored, passes, best, state)

    def counts(self) -> dict[str, int]:
        """Groups by state."""
        return {name: int((self.state == s).sum()) for s, name in STATE_NAMES.items()}


def best_guidance(
    evidence: Evidence, guidances: Sequence[float], among: np.ndarray | None = None
) -> float:
    """The guidance value with the highest pass rate in ``evidence`` (only its entries
    ``among`` where given; add-one smoothed; ties: the first listed)."""
    use = np.ones(len(evidence.guidance), dtype=bool) if among is None else among
    tried = [int((use & (evidence.guidance == g)).sum()) for g in guidances]
    passed = [int(evidence.passed[use & (evidence.guidance == g)].sum()) for g in guidances]
    return smoothed_best(guidances, tried, passed)


def smoothed_best(guidances: Sequence[float], tried: Sequence[int], passed: Sequence[int]) -> float:
    """The guidance whose add-one smoothed pass rate is highest (ties: the first)."""
    rates = [(p + 1) / (n + 2) for n, p in zip(tried, passed, strict=True)]
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


def first_ids(plan: EditPlan, n: int) -> pa.Array:
    """The ids of the first ``n`` jobs of a plan (its priority order)."""
    parts: list[pa.Array] = []
    left = n
    for chunk in plan:
        if left <= 0:
            break
        ids = flat(chunk.column("candidate_id"))[:left]
        parts.append(ids)
        left -= len(ids)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


@dataclass
class Decisions:
    """Candidates whose verdicts are committed: id, validator passed, score (NaN where
    no judge scored it), as ``decide`` scores them."""

    ids: pa.Array
    passed: np.ndarray
    score: np.ndarray


def committed_decisions(tables: RunTables) -> Decisions:
    """Every candidate a committed verdict decides: the validator's verdict, else a drop
    by the low-level check (score 0) or the pre-filter (its score). A chain commits a
    link's batch only after what it forwarded is committed downstream, so a verdict
    that forwarded its candidate always has the next link's verdict committed too."""
    names = [name for name in FILTERS if name in tables.enabled and tables.exists(name)]
    if not names:
        return Decisions(pa.array([], pa.string()), np.zeros(0, bool), np.zeros(0))
    ids = pc.unique(
        pa.concat_arrays([flat(tables.read(n, ["subject_id"]).column("subject_id")) for n in names])
    )
    decided, passed, score = decide(tables, ids)
    keep = pa.array(decided)
    return Decisions(ids.filter(keep), passed[decided], score[decided])


def _verdict_score(verdict: Verdict) -> float:
    """min(adherence, aesthetic) of a verdict; NaN for a judge error or no scores."""
    if verdict.reason == "judge_error" or verdict.adherence is None or verdict.aesthetic is None:
        return float("nan")
    return float(min(verdict.adherence, verdict.aesthetic))


class SeedFeed:
    """Link 0's inputs of an adaptive search run as one chain, and the chain's observer.

    The first round's jobs come first, in the grid's priority order; after that, a
    group's next round is issued as soon as every candidate of its current round is
    decided (judged, or dropped by a filter), so the editor keeps generating while the
    judges score. A group's decisions read only its own verdicts, and the guidance of
    the later rounds (``SEARCH_GUIDANCE best``) is chosen from the first
    ``SEARCH_GUIDANCE_SHARE`` of the first round's jobs: the jobs a group gets are a
    function of verdicts, not of timing, and a rerun (``decided``: what is committed)
    issues the same jobs. When nothing is ready while candidates are in flight the feed
    yields ``PAUSE``; the engine asks again once a batch finishes.
    """

    def __init__(
        self, plan: EditPlan, rule: SearchRule, links: Sequence[Link], decided: Decisions
    ) -> None:
        self.plan = plan
        self.rule = rule
        self.names = [link.stage.name for link in links]
        self.decided = decided
        self.bounds = rule.rounds()
        n = plan.groups
        self.scored = np.zeros(n, dtype=np.int64)
        self.passes = np.zeros(n, dtype=np.int64)
        self.best = np.full(n, -np.inf)
        self.state = np.full(n, OPEN, dtype=np.int8)
        self.round = np.zeros(n, dtype=np.int64)  # the round each group is in
        self.pending = np.zeros(n, dtype=np.int64)  # its undecided jobs of that round
        # issued, undecided jobs: id -> (group, round, guidance, calibration job)
        self.inflight: dict[str, tuple[int, int, float, bool]] = {}
        self.ready: list[int] = []  # groups whose next round is to be issued
        self.waiting: list[int] = []  # groups whose next round waits for the guidance
        self.guidance: float | None = None
        # the calibration jobs (the first of the first round): not yet issued, and per
        # guidance value decided, passed and undecided
        self.unissued = 0
        self.tried = {float(g): 0 for g in rule.guidances}
        self.passed = {float(g): 0 for g in rule.guidances}
        self.undecided = {float(g): 0 for g in rule.guidances}
        self.stats = [
            {
                "round": r,
                "seeds": [lo, hi],
                "jobs": 0,
                "groups_open": 0,
                "candidates": 0,
                "passed": 0,
                "closed_passed": 0,
                "closed_hopeless": 0,
                "guidance": None,
            }
            for r, (lo, hi) in enumerate(self.bounds)
        ]

    # ---- the inputs ------------------------------------------------------------------
    def __iter__(self) -> Iterator[pa.Table | object]:
        lo, hi = self.bounds[0]
        first = self.plan.part((lo, hi))
        total = len(first)
        calibration = self.unissued = self.rule.calibration_jobs(total)
        self.pending[:] = hi - lo
        self.stats[0]["groups_open"] = self.plan.groups if total else 0
        issued = 0
        for chunk in first:
            flags = issued + np.arange(chunk.num_rows) < calibration
            issued += chunk.num_rows
            self._issue(chunk, flags)
            yield chunk
        while True:
            table = self._next_round()
            if table is not None:
                yield table
            elif self.inflight:
                yield PAUSE
            else:
                return

    def _next_round(self) -> pa.Table | None:
        """The jobs of the next round of every ready group (None when none is ready)."""
        if not self.ready:
            return None
        groups = np.asarray(self.ready, dtype=np.int64)
        self.ready = []
        parts = []
        rounds = self.round[groups] + 1
        for r in np.unique(rounds):
            at = groups[rounds == r]
            self.round[at] = r
            lo, hi = self.bounds[int(r)]
            self.pending[at] = hi - lo
            self.stats[int(r)]["groups_open"] += len(at)
            if self.rule.chooses_guidance:
                self.stats[int(r)]["guidance"] = self.guidance
            parts.append(self.plan.group_jobs(at, (lo, hi), self.guidance))
        table = pa.concat_tables(parts)
        self._issue(table, np.zeros(table.num_rows, dtype=bool))
        return table

    def _issue(self, jobs: pa.Table, calibration: np.ndarray) -> None:
        """Register issued jobs (of each group's current round); decide the ones a
        committed verdict decides already."""
        ids = flat(jobs.column("candidate_id"))
        j = pc.cast(pc.struct_field(pc.extract_regex(ids, _CANDIDATE), "j"), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        groups = self.plan.group_index(jobs.column("source_id"), j)
        guidance = jobs.column("guidance").to_numpy().astype(np.float64)
        rounds = self.round[groups]
        for k in np.unique(rounds):
            self.stats[int(k)]["jobs"] += int((rounds == k).sum())
        for value in guidance[calibration]:
            self.undecided[float(value)] += 1
        self.unissued -= int(calibration.sum())
        at = positions(ids, self.decided.ids)
        for i, cid in enumerate(ids.to_pylist()):
            self.inflight[cid] = (
                int(groups[i]),
                int(rounds[i]),
                float(guidance[i]),
                bool(calibration[i]),
            )
            if at[i] >= 0:
                self._decide(
                    cid, True, bool(self.decided.passed[at[i]]), float(self.decided.score[at[i]])
                )

    def _choose_guidance(self) -> None:
        """Fix the later rounds' guidance as soon as the calibration jobs still open
        cannot change it: the value whose smoothed pass rate, were all its open jobs to
        fail, still beats every other's were all of theirs to pass (jobs not yet issued
        counted against it and for each other). The choice is the one all the
        calibration verdicts give; it just comes before the last of them."""
        if self.guidance is not None or not self.rule.chooses_guidance:
            return
        gs = [float(g) for g in self.rule.guidances]
        x = self.unissued
        for i, lead in enumerate(gs):
            lo_num = self.passed[lead] + 1
            lo_den = self.tried[lead] + self.undecided[lead] + x + 2
            certain = True
            for k, other in enumerate(gs):
                if k == i:
                    continue
                hi_num = self.passed[other] + self.undecided[other] + x + 1
                hi_den = self.tried[other] + self.undecided[other] + x + 2
                left, right = lo_num * hi_den, hi_num * lo_den  # lo/lo_den vs hi/hi_den
                if left < right or (left == right and k < i):
                    certain = False
                    break
            if certain:
                self.guidance = lead
                self.ready.extend(self.waiting)
                self.waiting = []
                return

    # ---- the observer ----------------------------------------------------------------
    def observe(self, done: Done) -> None:
        """Take a finished batch of the chain: a job the editor made no candidate for, a
        candidate a filter dropped, or the validator's verdict decides its job."""
        if done.link == 0:
            made = {row.id for row in done.outputs}
            for job in done.inputs:
                if job.id not in made and job.id in self.inflight:
                    self._decide(job.id, False, False, float("nan"))
            return
        last = done.link == len(self.names) - 1
        lowlevel = self.names[done.link] == "lowlevel"
        for cand, verdict in zip(done.inputs, done.outputs, strict=True):
            if cand.id not in self.inflight:
                continue
            if last:
                self._decide(cand.id, True, bool(verdict.passed), _verdict_score(verdict))
            elif not verdict.passed:
                score = 0.0 if lowlevel else _verdict_score(verdict)
                self._decide(cand.id, True, False, score)

    def _decide(self, cid: str, made: bool, passed: bool, score: float) -> None:
        """One job decided: count it; close or advance its group once its round is."""
        g, r, guidance, calibration = self.inflight.pop(cid)
        st = self.stats[r]
        st["candidates"] += int(made)
        st["passed"] += int(passed)
        if not math.isnan(score):
            self.scored[g] += 1
            self.best[g] = max(self.best[g], score)
        self.passes[g] += int(passed)
        if calibration:
            self.tried[guidance] += 1
            self.passed[guidance] += int(passed)
            self.undecided[guidance] -= 1
            self._choose_guidance()
        self.pending[g] -= 1
        if self.pending[g]:
            return
        one = np.array([g])
        state = int(
            self.rule.close(self.scored[one], self.passes[one], self.best[one], self.bounds[r][1])[
                0
            ]
        )
        self.state[g] = state
        if state == PASSED:
            st["closed_passed"] += 1
        elif state == HOPELESS:
            st["closed_hopeless"] += 1
        elif state == OPEN:
            if self.rule.chooses_guidance and self.guidance is None:
                self.waiting.append(g)
            else:
                self.ready.append(g)

    # ---- the record ------------------------------------------------------------------
    def groups(self) -> Groups:
        """Every group's counts and state."""
        return Groups(self.scored, self.passes, self.best, self.state)

    def round_stats(self) -> list[dict[str, Any]]:
        """One entry per round that issued jobs, as the round-by-round loop records."""
        return [dict(st) for st in self.stats if st["jobs"]]


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
        """Every round until no group is open, the cap is spent or the budget is: one
        streamed chain (adaptive without a job cap or an editor budget), or one chain per
        round (where a cap or a budget may bind, each round's jobs are drawn uniformly
        from the work still open)."""
        if self.rule.adaptive and not self.plan.max_jobs and not self.budget_seconds:
            return self._stream()
        return self._rounds()

    def _wall_before(self) -> float:
        """The mining wall seconds an earlier run of this rule recorded (0 for none)."""
        before = self.tables.store.read_stats(STATS) or {}
        if before.get("rule") != self.rule.describe():
            return 0.0
        return float(before.get("wall_seconds", 0.0))

    def _stream(self) -> MiningResult:
        """The search as one chain: a group's next round starts as soon as its own
        candidates are judged (``SeedFeed``)."""
        store = self.tables.store
        started = self.clock()
        wall_before = self._wall_before()
        worked = self._catch_up(None)
        feed = SeedFeed(self.plan, self.rule, self.links, committed_decisions(self.tables))
        extra = {**self.extra_stats, "search": self.rule.search}
        extras = [extra] + [None] * (len(self.links) - 1)
        results = self.runner.run_chain(
            self.links, feed, self.budget_seconds, extras, observe=feed.observe
        )
        result = results[0]
        worked |= any(bool(r.stats.get("processed_rows")) for r in results)
        stop = "budget" if result.stats.get("not_scheduled") else "done"
        elapsed = (self.clock() - started) if worked else 0.0
        rounds = feed.round_stats()
        stats = self._record(rounds, feed.groups(), wall_before + elapsed, stop)
        candidates = dict(result.stats)
        candidates["rounds"] = len(rounds)
        store.write_stats("candidates", candidates)
        return MiningResult(StageResult("candidates", candidates), [], stats)

    def _rounds(self) -> MiningResult:
        """One chain per round; a round's jobs are drawn (within the cap) from the groups
        still open after the rounds before it."""
        store = self.tables.store
        started = self.clock()
        wall_before = self._wall_before()
        n_groups = self.plan.groups
        open_now = np.ones(n_groups, dtype=bool)
        left = self.plan.max_jobs
        rounds: list[dict[str, Any]] = []
        totals = {"rows_in": 0, "resumed_rows": 0, "processed_rows": 0, "not_scheduled": 0}
        worked = False
        result: StageResult | None = None
        groups: Groups | None = None
        stop = "done"
        calibration: pa.Array | None = None
        guidance = None
        for r, (lo, hi) in enumerate(self.rule.rounds()):
            by_group = None if guidance is None else np.full(n_groups, guidance)
            wave = self.plan.part((lo, hi), None if r == 0 else open_now, max(left, 0), by_group)
            jobs = len(wave)
            if r == 0 and self.rule.chooses_guidance:
                calibration = first_ids(wave, self.rule.calibration_jobs(jobs))
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
            if calibration is not None and r == 0:  # the later rounds' guidance
                assert evidence.ids is not None
                among = pc.is_in(evidence.ids, value_set=calibration)
                guidance = best_guidance(
                    evidence, self.rule.guidances, among.to_numpy(zero_copy_only=False)
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

    def _catch_up(self, r: int | None) -> bool:
        """Run every filter link over the candidates of round ``r`` (None: of every
        round) that reach it (a chain that ran all of them finds nothing to do; a
        crashed one is finished here). Returns whether any row was processed."""
        cand = self.tables.read("candidates", ["candidate_id"]).column("candidate_id")
        if r is None:
            ids = flat(cand)
        else:
            m = pc.cast(
                pc.struct_field(pc.extract_regex(cand, _CANDIDATE), "m"), pa.int64()
            ).to_numpy(zero_copy_only=False)
            ids = cand.filter(pa.array(self.rule.round_of(m) == r))
        if not len(ids):
            return False
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
