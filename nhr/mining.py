"""The mining loop: edit jobs through the editor, the filters and the hard validator, in
rounds of seeds per (source, instruction).

With ``SEARCH grid`` (the paper) there is one round holding every seed of every group
(source, instruction): the rows of the plain N×k×M grid. With ``SEARCH adaptive`` a
group gets ``SEARCH_FIRST_SEEDS`` seeds, then ``SEARCH_ROUND_SEEDS`` more per round up to
``M_EDIT_SEEDS``, and closes once ``SEARCH_PASSES`` of its candidates passed the hard
validator, or as hopeless once ``SEARCH_HOPELESS_AFTER`` of them scored and every score is
below ``SEARCH_HOPELESS_BELOW``, or by the posterior stop (``SEARCH_STOP_BELOW``,
``nhr.search_stop``) once its failed seeds make it unlikely the editor can do it. With
``SEARCH_GUIDANCE best`` the later rounds run at the guidance that passed most often
among the first ``SEARCH_GUIDANCE_SHARE`` of the first round's jobs (the calibration
jobs, which also fit the posterior stop's rates; later rounds wait for them). A group's
jobs are the grid's jobs (same id, seed and steps).

The search is one chain fed by a ``SeedFeed`` and one ``SearchState`` (the groups'
counts and states, the round statistics, the guidance choice), updated job by job as
verdicts come (``observe``) and in bulk from committed verdicts on a rerun. Without a
job cap or an editor budget the feed streams: the first round's jobs in the grid's
priority order, then each group's next round as soon as its own candidates are judged,
so the editor keeps generating while the judges score and no round waits for the
slowest group. With ``MAX_EDIT_JOBS`` or ``EDIT_BUDGET_SECONDS`` (and under ``SEARCH
grid``) it goes round by round: each round's jobs are drawn in priority order from the
groups still open once the round before is decided, so wherever the cap or the budget
binds it has taken a uniform sample of the open work. Both decide from the same
verdicts by the same rule and make the same rows.

Decisions read verdicts only, never timing, so a run killed anywhere and rerun makes
the rows of an uninterrupted run (without an editor budget in seconds, where timing
decides what fits). The loop calls only the runner and reads tables: any engine runs it.
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
from nhr.hashing import KeySet, fingerprints
from nhr.runner import PAUSE, Runner, StageResult
from nhr.search_diagnostic import diagnose_groups, group_hashes
from nhr.search_stop import PosteriorStop
from nhr.stages.edits import EditPlan
from nhr.tables import FILTERS, RunTables, flat

STATS = "mining"  # stats/mining.json
OPEN, PASSED, HOPELESS, EXHAUSTED = 0, 1, 2, 3
STATE_NAMES = {OPEN: "open", PASSED: "passed", HOPELESS: "hopeless", EXHAUSTED: "exhausted"}
Outcome = tuple[bool, bool, float]  # a job's: candidate made, validator passed, score
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
    stop_below: float = 0.0
    stop_recall: float = 0.9

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
            stop_below=s.search_stop_below,
            stop_recall=s.search_stop_recall,
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
            if self.guidance == "best" or self.stop_below:
                out["guidance_share"] = self.guidance_share
            if self.stop_below:
                out.update(stop_below=self.stop_below, stop_recall=self.stop_recall)
        return out

    @property
    def chooses_guidance(self) -> bool:
        """Whether rounds after the first run at a guidance chosen from the first's."""
        return self.adaptive and self.guidance == "best" and len(self.rounds()) > 1

    @property
    def posterior_stop(self) -> bool:
        """Whether groups close by the posterior stop (``nhr.search_stop``)."""
        return self.adaptive and self.stop_below > 0 and len(self.rounds()) > 1

    def calibration_jobs(self, first_round_jobs: int) -> int:
        """How many of the first round's jobs (the first by priority) choose the guidance
        of the later rounds and fit the posterior stop's rates (0 where neither is)."""
        if not (self.chooses_guidance or self.posterior_stop) or not first_round_jobs:
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


def verdict_scores(name: str, error: np.ndarray, adh: np.ndarray, aes: np.ndarray) -> np.ndarray:
    """The score a verdict of filter ``name`` gives its candidate: min(adherence,
    aesthetic), NaN for a judge error; 0 for the low-level check."""
    if name == "lowlevel":
        return np.zeros(len(error))
    return np.where(error, np.nan, np.minimum(adh, aes))


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


@dataclass
class Decisions:
    """Candidates whose verdicts are committed, each held as the fingerprint of its id
    (``nhr.hashing.fingerprints``, sorted), whether the validator passed it and its
    score (NaN where no judge scored it): the validator's verdict where it got there,
    else that of the filter that dropped it (``verdict_scores``). About 17 bytes a
    candidate, so a rerun of a run of millions of candidates holds no strings."""

    fps: np.ndarray
    passed: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.fps)

    def positions(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Where each id's decision is (int64), -1 for an id no verdict decides."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if not len(self.fps) or not len(ids):
            return out
        fps = fingerprints(ids)
        pos = np.minimum(np.searchsorted(self.fps, fps), len(self.fps) - 1)
        hit = self.fps[pos] == fps
        out[hit] = pos[hit]
        return out


def _deciding_verdicts(
    tables: RunTables, columns: list[str]
) -> Iterator[tuple[str, pa.RecordBatch, np.ndarray]]:
    """The verdict rows that decide a candidate, a batch at a time, the validator's
    first: every verdict of the validator, a filter's drops only (a filter decides only
    the candidates it drops), as (table name, the rows' ``columns``, passed). A
    candidate with verdicts in two tables is decided by the first given."""
    for name in reversed(FILTERS):  # the validator first: its verdict decides
        if name not in tables.enabled or not tables.exists(name):
            continue
        for batch in tables.iter_batches(name, columns):
            ok = pc.fill_null(batch.column("passed"), False).to_numpy(zero_copy_only=False)
            ok = np.asarray(ok, dtype=bool)
            if name != "validator":
                batch, ok = batch.filter(pa.array(~ok)), ok[~ok]
            yield name, batch, ok


def committed_decisions(tables: RunTables) -> Decisions:
    """Every candidate a committed verdict decides: the validator's verdict, else a drop
    by the low-level check (score 0) or the pre-filter (its score). A chain commits a
    link's batch only after what it forwarded is committed downstream, so a verdict
    that forwarded its candidate always has the next link's verdict committed too.
    The verdict tables are read a batch at a time."""
    fps, passed, score = [], [], []
    columns = ["subject_id", "passed", "reason", "adherence", "aesthetic"]
    for name, batch, ok in _deciding_verdicts(tables, columns):
        error = pc.fill_null(pc.equal(batch.column("reason"), "judge_error"), False)
        adh, aes = (
            pc.fill_null(batch.column(c), np.nan).to_numpy(zero_copy_only=False)
            for c in ("adherence", "aesthetic")
        )
        score.append(
            verdict_scores(
                name,
                np.asarray(error.to_numpy(zero_copy_only=False), dtype=bool),
                np.asarray(adh, dtype=np.float64),
                np.asarray(aes, dtype=np.float64),
            )
        )
        fps.append(fingerprints(batch.column("subject_id")))
        passed.append(ok)
    if not fps:
        return Decisions(np.zeros(0, np.uint64), np.zeros(0, bool), np.zeros(0))
    every = np.concatenate(fps)
    fps.clear()
    kept, first = np.unique(every, return_index=True)  # sorted; the first verdict wins
    del every
    return Decisions(kept, np.concatenate(passed)[first], np.concatenate(score)[first])


def decided_outcomes(tables: RunTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every candidate ``committed_decisions`` finds, as (group index, seed number,
    validator passed) arrays: the verdict tables read a batch at a time, each candidate
    held as a few integers (hashes of its id and group), never as a string; a candidate
    decided twice is dropped as it comes (a ``KeySet`` of the ids seen), so what is held
    is about 20 bytes a candidate at any size."""
    seen = KeySet()
    groups, seeds, passed = [np.zeros(0, np.int64)], [np.zeros(0, np.int16)], [np.zeros(0, bool)]
    for _, batch, ok in _deciding_verdicts(tables, ["subject_id", "passed"]):
        fps = fingerprints(batch.column("subject_id"))
        new = ~seen.contains(fps)  # the first verdict wins
        new[np.setdiff1d(np.arange(len(fps)), np.unique(fps, return_index=True)[1])] = False
        if not new.all():
            batch, ok, fps = batch.filter(pa.array(new)), ok[new], fps[new]
        seen.add(fps)
        g, m = group_hashes(batch.column("subject_id").to_pylist())
        groups.append(g)
        seeds.append(m.astype(np.int16))  # a seed number is below M (≤ 100)
        passed.append(ok)
    del seen
    hashed = np.concatenate(groups)
    groups.clear()
    _, group = np.unique(hashed, return_inverse=True)
    del hashed
    return group.astype(np.int32), np.concatenate(seeds), np.concatenate(passed)


class SearchState:
    """What the search knows: per group its candidates scored, validator passes, best
    score, state and current round (with its undecided jobs), per round its figures,
    and the guidance of the later rounds (``SEARCH_GUIDANCE best``), chosen from the
    verdicts of the calibration jobs (the first of the first round by priority).

    ``decide`` takes one job's outcome; a group closes (or becomes ready for its next
    round) when its round's last job is decided, unless ``by_round``: then every group
    is closed at once when the round ends (``end_round``)."""

    def __init__(self, rule: SearchRule, n_groups: int, by_round: bool) -> None:
        self.rule = rule
        self.by_round = by_round
        self.bounds = rule.rounds()
        # counts of at most M seeds: a byte each per group where M fits one (the config
        # allows up to 100), as a run of Table 2's size has millions of groups
        count = np.int8 if rule.m_seeds <= np.iinfo(np.int8).max else np.int32
        self.scored = np.zeros(n_groups, dtype=count)
        self.passes = np.zeros(n_groups, dtype=count)
        self.best = np.full(n_groups, -np.inf)
        self.state = np.full(n_groups, OPEN, dtype=np.int8)
        self.round = np.zeros(n_groups, dtype=count)  # the round each group is in
        self.pending = np.zeros(n_groups, dtype=count)  # its undecided jobs of that round
        self.ready: list[int] = []  # groups whose next round is to be issued
        self.waiting: list[int] = []  # groups whose next round waits for the guidance
        self.guidance: float | None = None
        # the calibration jobs: not yet issued, and per guidance decided, passed, undecided
        self.unissued = 0
        self.tried = {float(g): 0 for g in rule.guidances}
        self.passed = {float(g): 0 for g in rule.guidances}
        self.undecided = {float(g): 0 for g in rule.guidances}
        self.stop = PosteriorStop(n_groups, rule.stop_below, rule.stop_recall)
        self.posterior = rule.posterior_stop  # per job below: computed once
        zero = dict.fromkeys(("jobs", "groups_open", "candidates", "passed"), 0)
        zero.update(closed_passed=0, closed_hopeless=0, guidance=None)
        self.stats = [
            {"round": r, "seeds": [lo, hi], **zero} for r, (lo, hi) in enumerate(self.bounds)
        ]

    def decide(
        self, g: int, r: int, guidance: float, calibration: bool, outcome: Outcome, steps: int = 0
    ) -> None:
        """One job of group ``g`` (in round ``r``, at ``guidance`` and ``steps``) decided:
        count it; close the group or mark it ready once its round is decided (not
        ``by_round``)."""
        made, passed, score = outcome
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
        if self.posterior:
            judged = made and not math.isnan(score)
            if self.stop.observe(g, (guidance, steps), calibration, made, passed, judged):
                self._release()
        self.pending[g] -= 1
        if self.pending[g] or self.by_round:
            return
        one = np.array([g])
        state = self.rule.close(
            self.scored[one], self.passes[one], self.best[one], self.bounds[r][1]
        )
        if state[0] == OPEN and self.stop.stops(one)[0]:
            state[0] = HOPELESS
        self.state[g] = state[0]
        if state[0] == PASSED:
            st["closed_passed"] += 1
        elif state[0] == HOPELESS:
            st["closed_hopeless"] += 1
        elif state[0] == OPEN:
            if self._held():
                self.waiting.append(g)
            else:
                self.ready.append(g)

    def _held(self) -> bool:
        """Whether later rounds wait for the calibration jobs: for the guidance, or for
        the posterior stop's rates."""
        if self.rule.chooses_guidance and self.guidance is None:
            return True
        return self.posterior and not self.stop.fixed

    def _release(self) -> None:
        """Once nothing holds later rounds: close the waiting groups the posterior stop
        closes (in the round each is in), make the others ready."""
        if self._held() or self.by_round:
            return
        waiting = np.asarray(self.waiting, dtype=np.int64)
        self.waiting = []
        stop = self.stop.stops(waiting)
        for g in waiting[stop]:
            self.state[g] = HOPELESS
            self.stats[int(self.round[g])]["closed_hopeless"] += 1
        self.ready.extend(int(g) for g in waiting[~stop])

    def end_round(self, r: int) -> np.ndarray:
        """Close every group after round ``r`` (``by_round``); the groups still open."""
        was_open = self.state == OPEN
        state = self.rule.close(self.scored, self.passes, self.best, self.bounds[r][1])
        self.state = np.where(was_open, state, self.state).astype(np.int8)
        if r == 0 and self.posterior and not self.stop.fixed:
            self.stop.fix()
        still = np.flatnonzero(self.state == OPEN)
        self.state[still[self.stop.stops(still)]] = HOPELESS
        st = self.stats[r]
        st["closed_passed"] = int((was_open & (self.state == PASSED)).sum())
        st["closed_hopeless"] = int((was_open & (self.state == HOPELESS)).sum())
        if r == 0 and self.rule.chooses_guidance:
            gs = [float(g) for g in self.rule.guidances]
            self.guidance = smoothed_best(
                gs, [self.tried[g] for g in gs], [self.passed[g] for g in gs]
            )
        return self.state == OPEN

    def _choose_guidance(self) -> None:
        """Fix the later rounds' guidance as soon as the calibration jobs still open
        cannot change it: the value whose smoothed pass rate, were all its open jobs to
        fail, still beats every other's were all of theirs to pass (jobs not yet issued
        counted against it and for each other). The choice is the one all the
        calibration verdicts give; it just comes before the last of them."""
        if self.guidance is not None or not self.rule.chooses_guidance or self.by_round:
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
                self._release()
                return

    def counts(self) -> dict[str, int]:
        """Groups by state."""
        return {name: int((self.state == s).sum()) for s, name in STATE_NAMES.items()}

    def round_stats(self) -> list[dict[str, Any]]:
        """One entry per round that issued jobs."""
        return [dict(st) for st in self.stats if st["jobs"]]


class SeedFeed:
    """Link 0's inputs of a search run as one chain, and the chain's observer.

    The first round's jobs come first, in the grid's priority order. Streamed, a
    group's next round is issued as soon as every candidate of its current round is
    decided (judged, or dropped by a filter), so the editor keeps generating while the
    judges score; ``by_round``, the next round's jobs are drawn (within ``max_jobs``)
    from the groups still open once every job of the round is decided. Decisions read
    only verdicts, so the jobs a group gets are a function of verdicts, not of timing,
    and a rerun (``decided``: what is committed) issues the same jobs. When nothing is
    ready while candidates are in flight the feed yields ``PAUSE``; the engine asks
    again once a batch finishes.
    """

    def __init__(
        self,
        plan: EditPlan,
        rule: SearchRule,
        links: Sequence[Link],
        decided: Decisions,
        by_round: bool = False,
    ) -> None:
        self.plan = plan
        self.rule = rule
        self.names = [link.stage.name for link in links]
        self.decided = decided
        self.by_round = by_round
        self.search = SearchState(rule, plan.groups, by_round)
        # issued, undecided jobs: id -> (group, round, guidance, calibration job, steps)
        self.inflight: dict[str, tuple[int, int, float, bool, int]] = {}
        self.left = plan.max_jobs  # jobs the cap leaves (by round)
        self.stop = "done"
        self.current = 0  # the round being issued (by round)

    @property
    def guidance(self) -> float | None:
        """The later rounds' guidance, once chosen."""
        return self.search.guidance

    # ---- the inputs ------------------------------------------------------------------
    def __iter__(self) -> Iterator[pa.Table | object]:
        lo, hi = self.search.bounds[0]
        first = self.plan.part((lo, hi), None, max(self.left, 0))
        total = len(first)
        calibration = self.search.unissued = self.rule.calibration_jobs(total)
        self.search.stop.issue_calibration(calibration)
        self.search.pending[:] = hi - lo
        self.search.stats[0]["groups_open"] = self.plan.groups if total else 0
        issued = 0
        for chunk in first:
            flags = issued + np.arange(chunk.num_rows) < calibration
            issued += chunk.num_rows
            self._issue(chunk, flags)
            yield chunk
        while True:
            table = self._next_round()
            if table is not None:
                yield from table
            elif self.inflight:
                yield PAUSE
            else:
                return

    def _next_round(self) -> list[pa.Table] | None:
        """The chunks of the next round's jobs (None when none is ready)."""
        if self.by_round:
            return self._next_wave()
        st = self.search
        if not st.ready:
            return None
        groups = np.asarray(st.ready, dtype=np.int64)
        st.ready = []
        parts = []
        rounds = st.round[groups] + 1
        for r in np.unique(rounds):
            at = groups[rounds == r]
            st.round[at] = r
            lo, hi = st.bounds[int(r)]
            st.pending[at] = hi - lo
            st.stats[int(r)]["groups_open"] += len(at)
            if self.rule.chooses_guidance:
                st.stats[int(r)]["guidance"] = st.guidance
            parts.append(self.plan.group_jobs(at, (lo, hi), st.guidance))
        table = pa.concat_tables(parts)
        self._issue(table, np.zeros(table.num_rows, dtype=bool))
        return [table]

    def _next_wave(self) -> list[pa.Table] | None:
        """By round, once the current round is decided: close it, then draw the next
        round's jobs from the groups still open (None: wait, or the search is over)."""
        if self.inflight or self.current < 0:
            return None
        st, r = self.search, self.current
        open_now = st.end_round(r)
        self.left -= st.stats[r]["jobs"] if self.plan.max_jobs else 0
        self.current = -1  # closed; no more rounds unless one is issued below
        if self.plan.max_jobs and self.left <= 0:
            self.stop = "cap" if open_now.any() else "done"
            return None
        if not open_now.any() or r + 1 >= len(st.bounds):
            return None
        self.current = r = r + 1
        lo, hi = st.bounds[r]
        by_group = None if st.guidance is None else np.full(self.plan.groups, st.guidance)
        wave = self.plan.part((lo, hi), open_now, max(self.left, 0), by_group)
        st.round[:] = r
        st.pending[:] = hi - lo
        st.stats[r]["groups_open"] = int(open_now.sum())
        st.stats[r]["guidance"] = st.guidance
        chunks = list(wave)
        for chunk in chunks:
            self._issue(chunk, np.zeros(chunk.num_rows, dtype=bool))
        return chunks

    def finish(self) -> None:
        """After the chain: close the round it ended in (by round; a spent budget ends
        a chain before its round is decided)."""
        if self.by_round and self.current >= 0:
            self.search.end_round(self.current)

    def _issue(self, jobs: pa.Table, calibration: np.ndarray) -> None:
        """Register issued jobs (of each group's current round); decide the ones a
        committed verdict decides already."""
        st = self.search
        ids = flat(jobs.column("candidate_id"))
        j = pc.cast(pc.struct_field(pc.extract_regex(ids, _CANDIDATE), "j"), pa.int64())
        groups = self.plan.group_index(jobs.column("source_id"), j.to_numpy(zero_copy_only=False))
        guidance = jobs.column("guidance").to_numpy().astype(np.float64)
        steps = jobs.column("steps").to_numpy().astype(np.int64)
        rounds = st.round[groups]
        for k in np.unique(rounds):
            st.stats[int(k)]["jobs"] += int((rounds == k).sum())
        for value in guidance[calibration]:
            st.undecided[float(value)] += 1
        st.unissued -= int(calibration.sum())
        at = self.decided.positions(ids)
        for i, cid in enumerate(ids.to_pylist()):
            self.inflight[cid] = (
                int(groups[i]),
                int(rounds[i]),
                float(guidance[i]),
                bool(calibration[i]),
                int(steps[i]),
            )
            if at[i] >= 0:
                d = self.decided
                self._decide(cid, (True, bool(d.passed[at[i]]), float(d.score[at[i]])))

    # ---- the observer ----------------------------------------------------------------
    def observe(self, done: Done) -> None:
        """Take a finished batch of the chain: a job the editor made no candidate for, a
        candidate a filter dropped, or the validator's verdict decides its job."""
        if done.link == 0:
            made = {row.id for row in done.outputs}
            for job in done.inputs:
                if job.id not in made and job.id in self.inflight:
                    self._decide(job.id, (False, False, float("nan")))
            return
        last = done.link == len(self.names) - 1
        out = done.outputs
        nan = float("nan")
        scores = verdict_scores(
            self.names[done.link],
            np.array([v.reason == "judge_error" for v in out], dtype=bool),
            np.array([nan if v.adherence is None else v.adherence for v in out], dtype=float),
            np.array([nan if v.aesthetic is None else v.aesthetic for v in out], dtype=float),
        )
        for cand, verdict, score in zip(done.inputs, out, scores, strict=True):
            if cand.id in self.inflight and (last or not verdict.passed):
                self._decide(cand.id, (True, bool(verdict.passed and last), float(score)))

    def _decide(self, cid: str, outcome: Outcome) -> None:
        """One issued job decided: (a candidate made, validator passed, score)."""
        g, r, guidance, calibration, steps = self.inflight.pop(cid)
        self.search.decide(g, r, guidance, calibration, outcome, steps)


class MiningLoop:
    """Runs a search over ``plan`` with ``links`` (the editor's first, then the enabled
    filters' in pipeline order) as one chain and records ``stats/mining.json``. A loop
    runs once: when its chain ends it lets go of the plan and the search's per-group
    state, before the diagnostic reads every verdict (at Table 2's size each is tens of
    megabytes)."""

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
        self.plan: EditPlan | None = plan
        self.links = list(links)
        self.rule = rule
        self.budget_seconds = budget_seconds
        self.extra_stats = extra_stats or {}
        self.clock = clock

    def run(self, by_round: bool | None = None) -> MiningResult:
        """Every round until no group is open, the cap is spent or the budget is: the
        feed streams (adaptive without a job cap or an editor budget), or goes round by
        round (where a cap or a budget may bind; ``by_round`` forces either)."""
        if self.plan is None:
            raise RuntimeError("a mining loop runs once; make a new one to mine again")
        if by_round is None:
            streamed = self.rule.adaptive and not self.plan.max_jobs and not self.budget_seconds
            by_round = not streamed
        started = self.clock()
        before = self.tables.store.read_stats(STATS) or {}
        wall_before = (
            before.get("wall_seconds", 0.0) if before.get("rule") == self.rule.describe() else 0.0
        )
        worked = self._catch_up()
        feed = SeedFeed(
            self.plan, self.rule, self.links, committed_decisions(self.tables), by_round
        )

        def extra(search: SearchState = feed.search) -> dict[str, Any]:
            return {
                **self.extra_stats,
                "search": self.rule.search,
                "rounds": len(search.round_stats()),
            }

        extras = [extra] + [None] * (len(self.links) - 1)
        results = self.runner.run_chain(
            self.links, feed, self.budget_seconds, extras, observe=feed.observe
        )
        feed.finish()
        worked |= any(bool(r.stats.get("processed_rows")) for r in results)
        stop = "budget" if results[0].stats.get("not_scheduled") else feed.stop
        elapsed = (self.clock() - started) if worked else 0.0
        figures = self._search_figures(feed.search)
        del feed, extra, extras  # the feed holds the plan and the search's state
        self.plan = None
        stats = self._record(figures, float(wall_before) + elapsed, stop)
        return MiningResult(results[0], results[1:], stats)

    def _catch_up(self) -> bool:
        """Run every filter link over the candidates that reach it and have no verdict
        (a candidate made while a filter was off, or before a crash; normally none).
        Returns whether any row was processed."""
        if not self.tables.count("candidates"):
            return False
        worked = False
        for link in self.links[1:]:
            i = FILTERS.index(link.stage.name)  # the survivors of the filters before it
            inputs = (
                self.tables.survivor_stream(FILTERS[i - 1])
                if i
                else self.tables.stream("candidates")
            )
            worked |= bool(self.runner.run(link.stage, inputs).stats.get("processed_rows"))
        return worked

    def diagnostic(self) -> dict[str, Any]:
        """The search diagnostic (``nhr.search_diagnostic``) of every decided candidate."""
        group, seed, passed = decided_outcomes(self.tables)
        return diagnose_groups(group, seed, passed, self.rule.adaptive)

    def _search_figures(self, search: SearchState) -> dict[str, Any]:
        """What ``stats/mining.json`` records of the search's state."""
        rounds = search.round_stats()
        return {
            **({"posterior_stop": search.stop.describe()} if self.rule.posterior_stop else {}),
            "rounds": rounds,
            "groups": len(search.state),
            "groups_by_state": search.counts(),
        }

    def _record(self, figures: dict[str, Any], wall: float, stop: str) -> dict[str, Any]:
        """Write ``stats/mining.json`` (the search's ``figures``, the diagnostic) and
        return it."""
        cand = self.tables.store.read_stats("candidates") or {}
        rounds = figures["rounds"]
        stats = {
            "stage": STATS,
            "search": self.rule.search,
            "rule": self.rule.describe(),
            **figures,
            "jobs": int(sum(r["jobs"] for r in rounds)),
            "grid_jobs": int(self.extra_stats.get("grid_jobs", 0)),
            "candidates": int(sum(r["candidates"] for r in rounds)),
            "stopped_by": stop,
            "wall_seconds": round(wall, 3),
            "editor_busy_seconds": round(float(cand.get("seconds", 0.0)), 3),
            "diagnostic": self.diagnostic(),
        }
        self.tables.store.write_stats(STATS, stats)
        return stats
