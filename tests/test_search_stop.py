"""The posterior stop: rates by setting, the posterior of a group's failures, and the rule
on synthetic verdict sequences (no pipeline)."""

import numpy as np
import pytest

from nhr.mining import HOPELESS, OPEN, SearchRule, SearchState
from nhr.search_diagnostic import diagnose, diagnose_groups
from nhr.search_stop import PosteriorStop, doable_share, setting_rates


def test_setting_rates_multiply_the_guidance_and_step_effects():
    # cells whose rates are a guidance effect times a step effect, many jobs each
    true = {(2.5, 18): 0.06, (2.5, 28): 0.12, (3.5, 18): 0.1, (3.5, 28): 0.2}
    tried = dict.fromkeys(true, 100_000)
    passed = {s: int(r * 100_000) for s, r in true.items()}
    rates = setting_rates(tried, passed)
    for s, r in true.items():
        assert rates[s] == pytest.approx(r, rel=0.05), s
    # a cell with few jobs borrows from its guidance and its step count
    few = {**tried, (2.5, 18): 3}
    none = {**passed, (2.5, 18): 3}  # three of three passed: the cell alone says 1.0
    assert setting_rates(few, none)[(2.5, 18)] < 0.2


def test_doable_share_falls_with_each_failure_by_its_setting_weight():
    weights = np.array([1.0, 0.5, 0.0])
    fails = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 5], [2, 0, 0]])
    share = doable_share(0.2, 0.9, weights, fails)
    assert share[0] == 1.0 and share[4] == 1.0  # nothing, or failures that say nothing
    assert share[1] < share[3] < share[2] < 1.0  # a failure at the best setting says most
    assert share[5] < share[1]
    # by hand: L = 1 - 0.9, posterior / prior = L / (0.2 L + 0.8)
    assert share[1] == pytest.approx(0.1 / (0.2 * 0.1 + 0.8))
    assert doable_share(1.0, 0.9, weights, fails).tolist() == [1.0] * 6  # all doable
    assert doable_share(0.2, 1.0, weights, fails)[1] == 0.0  # a sure recall: one fail ends it


def _stop(below: float = 0.5, recall: float = 0.9) -> PosteriorStop:
    """A stop over 4 groups whose calibration jobs (one per group) are decided: two
    settings, (3.5, 28) passing 2 of 3, (2.5, 18) failing its one."""
    stop = PosteriorStop(4, below, recall)
    stop.issue_calibration(4)
    verdicts = [(0, (3.5, 28), True), (1, (3.5, 28), True), (2, (3.5, 28), False)]
    fixed = [stop.observe(g, s, True, True, ok, True) for g, s, ok in verdicts]
    assert fixed == [False] * 3 and not stop.fixed
    assert not stop.stops(np.array([2])).any()  # nothing closes before the rates are fixed
    assert stop.observe(3, (2.5, 18), True, True, False, True)
    return stop


def test_the_stop_closes_by_the_setting_of_the_failures():
    stop = _stop()
    assert stop.fixed and stop.weights[0] == 1.0 and 0 < stop.weights[1] < 1
    # group 2 failed at the best setting, group 3 at the weak one: only 2 closes
    assert stop.stops(np.arange(4)).tolist() == [False, False, True, False]
    # more failures at the weak setting close group 3 as well
    for _ in range(6):
        stop.observe(3, (2.5, 18), False, True, False, True)
    assert stop.stops(np.array([3])).tolist() == [True]
    # a judge error or no candidate is no evidence; a setting no calibration job tried
    # weighs as the overall rate
    stop.observe(1, (3.5, 28), False, True, False, False)
    stop.observe(1, (3.5, 28), False, False, False, True)
    assert not stop.stops(np.array([1])).any()
    stop.observe(0, (4.5, 10), False, True, False, True)
    assert 0 < stop.weights[stop.settings[(4.5, 10)]] < 1
    assert stop.describe()["calibration_jobs"] == 4 and stop.describe()["prior"] > 0
    assert not _stop(below=0.0).stops(np.arange(4)).any()  # off


def test_on_a_two_kind_world_the_stop_keeps_the_doable_groups_and_saves_seeds():
    """Synthetic verdict sequences: a fifth of the groups doable (pass at 0.9 at the
    good setting, 0.45 at the weak one), the rest never; each seed's setting drawn.
    Seeds run in order until a pass or the rule closes the group."""
    rng = np.random.default_rng(7)
    n, m = 2000, 5
    doable = rng.random(n) < 0.2
    good = rng.random((n, m)) < 0.5  # the setting of each seed: good or weak
    chance = np.where(good, 0.9, 0.45) * doable[:, None]
    passes = rng.random((n, m)) < chance
    stop = PosteriorStop(n, 0.1, 0.9)
    settings = {True: (3.5, 28), False: (2.5, 18)}
    stop.issue_calibration(n)
    for g in range(n):  # seed 0 of every group calibrates
        stop.observe(g, settings[bool(good[g, 0])], True, True, bool(passes[g, 0]), True)
    assert stop.fixed
    gens, found = n, int(passes[:, 0].sum())
    open_ = ~passes[:, 0] & ~stop.stops(np.arange(n))
    for t in range(1, m):
        for g in np.flatnonzero(open_):
            gens += 1
            ok = bool(passes[g, t])
            stop.observe(g, settings[bool(good[g, t])], False, True, ok, True)
            found += ok
            open_[g] = not ok
        open_ &= ~stop.stops(np.arange(n))
    grid_found = int(passes.any(axis=1).sum())
    assert found >= 0.95 * grid_found
    assert gens / found <= 0.5 * (n * m) / grid_found


def test_the_search_state_closes_waiting_groups_once_the_rates_are_fixed():
    """Streamed: a group whose first round ends before the calibration is complete waits;
    the last calibration verdict closes or releases it."""
    rule = SearchRule("adaptive", m_seeds=3, hopeless_after=0, guidances=(2.5, 3.5), stop_below=0.5)
    assert rule.posterior_stop and rule.calibration_jobs(4) == 4
    state = SearchState(rule, 4, by_round=False)
    state.pending[:] = 1
    state.stop.issue_calibration(4)
    state.decide(2, 0, 3.5, True, (True, False, 1.0), 28)  # fails at the best setting
    assert state.waiting == [2] and state.state[2] == OPEN
    state.decide(0, 0, 3.5, True, (True, True, 5.0), 28)
    state.decide(1, 0, 3.5, True, (True, True, 5.0), 28)
    state.decide(3, 0, 2.5, True, (True, False, 1.0), 18)  # the last: rates fixed
    assert state.state.tolist()[2:] == [HOPELESS, OPEN] and state.ready == [3]
    assert state.stats[0]["closed_hopeless"] == 1
    # round by round, the same verdicts close the same group
    by_round = SearchState(rule, 4, by_round=True)
    by_round.stop.issue_calibration(4)
    for g, gd, ok, steps in [(2, 3.5, False, 28), (0, 3.5, True, 28), (1, 3.5, True, 28)]:
        by_round.decide(g, 0, gd, True, (True, ok, 5.0 if ok else 1.0), steps)
    by_round.decide(3, 0, 2.5, True, (True, False, 1.0), 18)
    assert by_round.end_round(0).tolist() == [False, False, False, True]
    assert by_round.state[2] == HOPELESS
    assert not SearchRule("adaptive", m_seeds=3).posterior_stop  # off by default


def test_the_diagnostic_replays_a_stop_after_n_failures():
    # a: passes at seed 2 only (seeds listed out of order); b: never (3 seeds);
    # c: passes at seed 0; d: passes at seeds 1 and 2
    ids = ["a-i0-e2", "a-i0-e0", "a-i0-e1", "b-i0-e0", "b-i0-e1", "b-i0-e2"]
    ids += ["c-i0-e0", "c-i0-e1", "d-i0-e0", "d-i0-e1", "d-i0-e2"]
    passed = [True, False, False, False, False, False, True, False, False, True, True]
    d = diagnose(ids, np.array(passed))
    replay = d["stop_after_failures"]
    # (a pass, another seed of its group): a 2 pairs, c 1, d 4; the other seed passed in
    # 2 of them (d's two passes, each with the other)
    assert d["pass_rate_after_a_pass"] == round(2 / (2 + 1 + 4), 4)
    # n = 1: c kept (1 gen); a, b, d stop after seed 0 (1 gen each): 4 of 11
    # n = 2: c (1), d (2) kept; a and b stop after two seeds (2 each): 7 of 11
    assert replay == [
        {"n": 1, "passing_groups": round(1 / 3, 4), "generations": round(4 / 11, 4)},
        {"n": 2, "passing_groups": round(2 / 3, 4), "generations": round(7 / 11, 4)},
    ]


def test_the_replayed_stop_is_the_replay_of_each_group_s_seeds_in_order():
    """The replay from per-group counts equals a replay that walks each group's seeds
    in order, on groups of random sizes whose seeds come shuffled."""
    rng = np.random.default_rng(3)
    group, seed = [], []
    for g in range(400):
        made = rng.permutation(9)[: rng.integers(1, 10)]  # distinct seeds, some missing
        group += [g] * len(made)
        seed += made.tolist()
    order = rng.permutation(len(group))
    group, seed = np.array(group)[order], np.array(seed, dtype=np.int16)[order]
    passed = rng.random(len(group)) < 0.2
    by_group: dict[int, list[tuple[int, bool]]] = {}
    for g, m, p in zip(group, seed, passed, strict=True):
        by_group.setdefault(int(g), []).append((int(m), bool(p)))
    walks = [[p for _, p in sorted(v)] for v in by_group.values()]
    hits = sum(any(w) for w in walks)
    expected = []
    for n in range(1, max(len(w) for w in walks)):
        kept = gens = 0
        for w in walks:
            first = w.index(True) if any(w) else None
            if first is not None and first < n:
                kept, gens = kept + 1, gens + first + 1
            else:
                gens += min(len(w), n)
        expected.append(
            {
                "n": n,
                "passing_groups": round(kept / hits, 4),
                "generations": round(gens / len(group), 4),
            }
        )
    assert diagnose_groups(group, seed, passed)["stop_after_failures"] == expected
