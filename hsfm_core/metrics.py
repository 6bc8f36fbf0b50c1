"""Group metrics (docs/ARCHITECTURE.md §Metrics): every average says which one it is.

All functions are vectorised over groups and work for any number of groups. Fractions are in
[0, 1]; a group with no examples has accuracy NaN (written as null in JSON) and is skipped by
the worst-group and mean-over-groups figures.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: np.ndarray, n: np.ndarray, z: float = Z_95) -> np.ndarray:
    """Wilson score interval per group: (k × 2) array of [low, high]; NaN where n = 0."""
    correct = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.stack([centre - half, centre + half], axis=-1)


def group_metrics(
    pred: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    n_groups: int,
    train_group_counts: Sequence[int] | None = None,
) -> dict:
    """Per-group accuracy with Wilson 95% intervals, worst group, and the three averages.

    - `avg_plain`: correct / N over all examples.
    - `avg_adjusted`: group accuracies weighted by the *train* group proportions (what the
      Waterbirds literature calls "average"); None when train counts are unknown.
    - `mean_group`: unweighted mean of the group accuracies.
    """
    pred, y, g = np.asarray(pred), np.asarray(y), np.asarray(g)
    correct = (pred == y).astype(np.int64)
    group_n = np.bincount(g, minlength=n_groups)[:n_groups]
    group_correct = np.bincount(g, weights=correct, minlength=n_groups)[:n_groups]
    with np.errstate(invalid="ignore", divide="ignore"):
        group_acc = group_correct / group_n
    present = group_n > 0
    worst = int(np.flatnonzero(present)[np.argmin(group_acc[present])]) if present.any() else None
    adjusted = None
    if train_group_counts is not None:
        weights = np.asarray(train_group_counts, dtype=np.float64)[:n_groups]
        usable = present & (weights > 0)
        if usable.any():
            adjusted = float(np.sum(group_acc[usable] * weights[usable]) / weights[usable].sum())
    return {
        "group_acc": _nan_to_none(group_acc),
        "group_n": group_n.tolist(),
        "group_ci": [_nan_to_none(ci) for ci in wilson_interval(group_correct, group_n)],
        "wga": float(group_acc[worst]) if worst is not None else None,
        "worst_group": worst,
        "avg_plain": float(correct.mean()) if len(correct) else None,
        "avg_adjusted": adjusted,
        "mean_group": float(np.mean(group_acc[present])) if present.any() else None,
    }


def _nan_to_none(values: np.ndarray) -> list:
    return [None if (v is None or math.isnan(v)) else float(v) for v in np.asarray(values, dtype=np.float64)]
