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
    size and sum (unequal sizes; None where it is undefined). The sums over groups are
    taken a slice of ``_GROUP_SLICE`` groups at a time, so a run's millions of groups
    need no float copy of their counts."""
    k, n = len(sizes), int(sizes.sum())
    if k < 2 or n <= k:
        return None
    mean = passes.sum() / n
    ssb = ssw = square = 0.0
    for lo in range(0, k, _GROUP_SLICE):
        s = sizes[lo : lo + _GROUP_SLICE].astype(np.float64)
        p = passes[lo : lo + _GROUP_SLICE].astype(np.float64)
        ssb += float((s * (p / s - mean) ** 2).sum())
        ssw += float((p - p**2 / s).sum())
        square += float((s**2).sum())
    msb, msw = ssb / (k - 1), ssw / (n - k)
    n0 = (n - square / n) / (k - 1)
    den = msb + (n0 - 1.0) * msw
    return round((msb - msw) / den, 4) if den > 0 else None


# groups whose counts are turned into floats at once by ``intra_group_correlation``
_GROUP_SLICE = 1 << 20


def independent_passes(sizes: np.ndarray, rate: float) -> np.ndarray:
    """Expected groups with 0, 1, … max(sizes) passes were every seed to pass
    independently at ``rate`` (each group its own binomial over its generations)."""
    top = int(sizes.max()) if len(sizes) else 0
    out = np.zeros(top + 1)
    for n, count in enumerate(np.bincount(sizes) if len(sizes) else []):
        if not count:
            continue
        for x in range(n + 1):
            out[x] += int(count) * comb(n, x) * rate**x * (1.0 - rate) ** (n - x)
    return out


def pass_rate_by_seed(group: np.ndarray, seed: np.ndarray, passed: np.ndarray) -> list[Any]:
    """Per seed number t: the share of the groups with no pass at seeds below t that
    made seed t and passed there (None where no such group made it)."""
    return _pass_rate_by_seed(
        _first_pass(group, seed, passed, int(group.max()) + 1), group, seed, passed
    )


def _first_pass(group: np.ndarray, seed: np.ndarray, passed: np.ndarray, k: int) -> np.ndarray:
    """Per group, the seed number of its first pass (the dtype's largest value where
    none passed): a seed number is below M, so it is held in the seeds' own dtype."""
    dtype = seed.dtype if np.issubdtype(seed.dtype, np.integer) else np.int64
    first = np.full(k, np.iinfo(dtype).max, dtype=dtype)
    np.minimum.at(first, group[passed], seed[passed])
    return first


def _pass_rate_by_seed(
    first: np.ndarray, group: np.ndarray, seed: np.ndarray, passed: np.ndarray
) -> list[Any]:
    at_risk = seed <= first[group]  # no pass at an earlier seed of its group
    out: list[Any] = []
    for t in range(int(seed.max()) + 1):
        made = at_risk & (seed == t)
        out.append(round(float(passed[made].mean()), 4) if made.any() else None)
    return out


def stop_after_failures(sizes: np.ndarray, needed: np.ndarray, hit: np.ndarray) -> list[Any]:
    """Per n = 1 … (largest group − 1): a stop after n failed seeds (seeds in order),
    replayed on a run's verdicts given per group: its generations (``sizes``), those
    up to and with its first pass (``needed``; all of them where none passed) and
    whether one passed (``hit``). The n, the share of the groups with a pass the stop
    keeps, the share of the generations it needs. A group's seed numbers are distinct
    (they are part of its candidates' ids), so a group's first pass comes after
    ``needed - 1`` failures."""
    total = int(sizes.sum())
    hits = max(1, int(hit.sum()))
    failures = np.where(hit, needed - 1, np.iinfo(np.int32).max)
    out: list[Any] = []
    for n in range(1, int(sizes.max()) if len(sizes) else 0):
        kept = failures < n
        gens = int(needed[kept].sum()) + int(np.minimum(sizes[~kept], n).sum())
        out.append(
            {
                "n": n,
                "passing_groups": round(int(kept.sum()) / hits, 4),
                "generations": round(gens / total, 4),
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
    number and whether the hard validator passed them. What it holds beside them is a
    few int32 counts per group (a run of Table 2's size has millions of groups)."""
    passed = np.asarray(passed, dtype=bool)
    n = len(group)
    if not n:
        return {"groups": 0, "generations": 0, "passes": 0}
    k = int(group.max()) + 1
    sizes = np.bincount(group, minlength=k).astype(np.int32)
    passes = np.bincount(group[passed], minlength=k).astype(np.int32)
    total = int(passes.sum())
    rate = total / n
    hit = passes > 0
    # a first-pass stop: seeds in order up to the first pass (all made where none passes)
    first = _first_pass(group, seed, passed, k)
    needed = np.bincount(group[seed <= first[group]], minlength=k).astype(np.int32)
    by_seed = _pass_rate_by_seed(first, group, seed, passed)
    del first
    observed = np.bincount(passes, minlength=int(sizes.max()) + 1)
    expected = independent_passes(sizes, rate)
    icc = intra_group_correlation(sizes, passes)
    pairs = int((passes.astype(np.int64) * (sizes - 1)).sum())
    after = (
        round(float((passes.astype(np.int64) * (passes - 1)).sum()) / pairs, 4) if pairs else None
    )
    return {
        "groups": k,
        "generations": n,
        "passes": total,
        "pass_rate": round(rate, 4),
        "argmax_drop": round(1.0 - int(hit.sum()) / total, 4) if total else None,
        "pass_rate_by_seed": by_seed,
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
        "stop_after_failures": stop_after_failures(sizes, needed, hit),
    }
