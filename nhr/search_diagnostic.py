"""What a search over seeds can buy on a run: how validator passes cluster by group.

A group is a (source, instruction); its candidates are its seeds. Were the seeds
independent, a group's passes would follow the binomial of its generations at the run's
pass rate; an editor that finds some pairs easy and others nearly impossible puts the
passes in fewer groups (more groups that never pass, more with several). The diagnostic
sets the observed passes per group beside that binomial, estimates the intra-group
correlation of passing, and counts the generations two reference searches would have
needed on the same candidates: a first-pass stop (seeds in order up to a group's first
pass; every seed made where none passes) and an oracle (one generation per group that
passes, none for the others). The further the first-pass stop and the oracle are from
the run's own generations, the more a search that stops early can save.
``pass_rate_after_a_pass`` is the chance that another seed of a group passes given that
one did (over every ordered pair of a group's seeds): near ``pass_rate`` for independent
seeds, near the validator's recall on pairs the editor can do where passes cluster; the
value to give ``SEARCH_STOP_RECALL`` (``nhr.search_stop``). ``stop_after_failures``
replays the simplest stop on the same verdicts: seeds in order until a pass or ``n``
failures; per ``n``, the share of the groups with a pass it keeps and the share of the
generations it needs (on a run that stopped groups itself, a replay within what the
run made).

``pass_rate_by_seed`` is the share of groups without a pass so far whose next seed
passes, seed by seed: flat for independent seeds, falling where passes cluster. It
stays true on a run that stops groups early (``SEARCH adaptive``, where a group stops at
its first pass), unlike the counts per group, the binomial and the correlation, which
such a run leaves out (None): its groups hold at most one pass by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np


def group_seeds(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate id (``...-i<j>-e<m>``): the index of its group (source, instruction)
    and its seed number ``m``."""
    hashed, seed = group_hashes(ids)
    _, group = np.unique(hashed, return_inverse=True)
    return group.astype(np.int64), seed


def group_hashes(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate id (``...-i<j>-e<m>``): a 64-bit hash of its group (source,
    instruction) and its seed number ``m``; for ids read a batch at a time (a run's
    millions of candidates are never held as strings), the hashes numbered afterwards
    with ``np.unique(..., return_inverse=True)``. Valid within one process."""
    group = np.empty(len(ids), dtype=np.int64)
    seed = np.empty(len(ids), dtype=np.int64)
    for i, cid in enumerate(ids):
        key, _, m = cid.rpartition("-e")
        group[i] = hash(key)
        seed[i] = int(m) if m.isdigit() else 0
    return group, seed


def intra_group_correlation(sizes: np.ndarray, passes: np.ndarray) -> float | None:
    """ANOVA estimate of the intra-group correlation of a 0/1 outcome from each group's
    size and sum (unequal sizes; None where it is undefined)."""
    k, n = len(sizes), int(sizes.sum())
    if k < 2 or n <= k:
        return None
    mean = passes.sum() / n
    ssb = float((sizes * (passes / sizes - mean) ** 2).sum())
    ssw = float((passes - passes**2 / sizes).sum())
    msb, msw = ssb / (k - 1), ssw / (n - k)
    n0 = (n - float((sizes**2).sum()) / n) / (k - 1)
    den = msb + (n0 - 1.0) * msw
    return round((msb - msw) / den, 4) if den > 0 else None


def independent_passes(sizes: np.ndarray, rate: float) -> np.ndarray:
    """Expected groups with 0, 1, … max(sizes) passes were every seed to pass
    independently at ``rate`` (each group its own binomial over its generations)."""
    top = int(sizes.max()) if len(sizes) else 0
    out = np.zeros(top + 1)
    for n, count in zip(*np.unique(sizes, return_counts=True), strict=True):
        for x in range(int(n) + 1):
            out[x] += count * comb(int(n), x) * rate**x * (1.0 - rate) ** (int(n) - x)
    return out


def pass_rate_by_seed(group: np.ndarray, seed: np.ndarray, passed: np.ndarray) -> list[Any]:
    """Per seed number t: the share of the groups with no pass at seeds below t that
    made seed t and passed there (None where no such group made it)."""
    first = np.full(int(group.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, group[passed], seed[passed])
    at_risk = seed <= first[group]  # no pass at an earlier seed of its group
    out: list[Any] = []
    for t in range(int(seed.max()) + 1):
        made = at_risk & (seed == t)
        out.append(round(float(passed[made].mean()), 4) if made.any() else None)
    return out


def stop_after_failures(group: np.ndarray, seed: np.ndarray, passed: np.ndarray) -> list[Any]:
    """Per n = 1 … (largest group − 1): a stop after n failed seeds (seeds in order),
    replayed on these verdicts: n, the share of the groups with a pass it keeps, the
    share of the generations it needs."""
    k = int(group.max()) + 1
    order = np.lexsort((seed, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    sizes = np.bincount(group, minlength=k)
    first = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first, g[passed[order]], rank[passed[order]])
    hit = first < np.iinfo(np.int64).max
    out: list[Any] = []
    for n in range(1, int(sizes.max())):
        kept = hit & (first < n)
        gens = np.where(kept, first + 1, np.minimum(sizes, n)).sum()
        out.append(
            {
                "n": n,
                "passing_groups": round(int(kept.sum()) / max(1, int(hit.sum())), 4),
                "generations": round(int(gens) / len(group), 4),
            }
        )
    return out


def diagnose(ids: Sequence[str], passed: np.ndarray, stops_early: bool = False) -> dict[str, Any]:
    """The search diagnostic of decided candidates ``ids`` (``passed``: the hard
    validator passed each); ``stops_early``: the search closed groups at their first
    pass, so only ``pass_rate_by_seed`` tells how passes cluster (module docstring)."""
    if not len(ids):
        return {"groups": 0, "generations": 0, "passes": 0}
    group, seed = group_seeds(ids)
    return diagnose_groups(group, seed, passed, stops_early)


def diagnose_groups(
    group: np.ndarray, seed: np.ndarray, passed: np.ndarray, stops_early: bool = False
) -> dict[str, Any]:
    """``diagnose`` of candidates given as their group index (0..k-1, each used), seed
    number and whether the hard validator passed them."""
    passed = np.asarray(passed, dtype=bool)
    n = len(group)
    if not n:
        return {"groups": 0, "generations": 0, "passes": 0}
    k = int(group.max()) + 1
    sizes = np.bincount(group, minlength=k)
    passes = np.bincount(group, weights=passed, minlength=k).astype(np.int64)
    total = int(passes.sum())
    rate = total / n
    hit = passes > 0
    # a first-pass stop: seeds in order up to the first pass (all made where none passes)
    first = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first, group[passed], seed[passed])
    needed = np.bincount(group, weights=seed <= first[group], minlength=k).astype(np.int64)
    observed = np.bincount(passes, minlength=int(sizes.max()) + 1)
    expected = independent_passes(sizes, rate)
    icc = intra_group_correlation(sizes.astype(np.float64), passes.astype(np.float64))
    pairs = int((passes * (sizes - 1)).sum())
    after = round(float((passes * (passes - 1)).sum()) / pairs, 4) if pairs else None
    return {
        "groups": k,
        "generations": n,
        "passes": total,
        "pass_rate": round(rate, 4),
        "argmax_drop": round(1.0 - int(hit.sum()) / total, 4) if total else None,
        "pass_rate_by_seed": pass_rate_by_seed(group, seed, passed),
        "passes_per_group": None
        if stops_early
        else {
            "observed": [int(x) for x in observed],
            "independent": [round(float(x), 2) for x in expected],
        },
        "never_pass_share": round(float((~hit).mean()), 4),
        "never_pass_share_independent": None if stops_early else round(float(expected[0]) / k, 4),
        "intra_group_correlation": None if stops_early else icc,
        "pass_rate_after_a_pass": None if stops_early else after,
        "generations_first_pass": int(needed.sum()),
        "generations_oracle": int(hit.sum()),
        "first_pass_share": round(int(needed.sum()) / n, 4),
        "oracle_share": round(int(hit.sum()) / n, 4),
        "stop_after_failures": stop_after_failures(group, seed, passed),
    }
