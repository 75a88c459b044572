"""Inter-rater agreement: Krippendorff's α (interval and ordinal), implemented here.

α = 1 − D_o / D_e over the coincidence matrix of the values raters gave the same items
(Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011): D_o is the observed
disagreement between values paired within an item, D_e the disagreement expected by
chance from all pairable values. Items with fewer than two ratings are not pairable and
are left out; any number of raters, missing ratings allowed. The difference function
is ``(c − k)²`` for interval data and, for ordinal data, the squared count of values
between c and k (each end counted half). α is 1 for perfect agreement, 0 for agreement
at chance, and None when it is undefined (fewer than two pairable values, or all equal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVELS = ("interval", "ordinal")


def coincidences(units: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values, sorted; their coincidence matrix) of pairable units."""
    pairable = [list(u) for u in units if len(u) >= 2]
    values = np.array(sorted({float(v) for u in pairable for v in u}))
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in pairable:
        counts = np.zeros(len(values))
        for v in u:
            counts[index[float(v)]] += 1
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    return values, o


def krippendorff_alpha(units: Sequence[Sequence[float]], level: str = "interval") -> float | None:
    """Krippendorff's α of the ratings of each unit (one list of values per item)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    values, o = coincidences(units)
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    if len(values) < 2 or n < 2:
        return None
    if level == "interval":
        delta = (values[:, None] - values[None, :]) ** 2
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        hi = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cum[hi + 1] - cum[lo]  # n_g summed over g from c to k
        delta = (between - (n_c[lo] + n_c[hi]) / 2.0) ** 2
    d_o = float((o * delta).sum()) / n
    d_e = float((np.outer(n_c, n_c) * delta).sum()) / (n * (n - 1))
    if d_e == 0:
        return None
    return round(float(1.0 - d_o / d_e), 4)
