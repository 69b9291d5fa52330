"""Evaluation metrics for RUL regression and failure classification (pure numpy).

All functions take ``(truth, prediction)`` in that order, accept any array-like of
matching shape, and raise ``ValueError`` for mismatched shapes, empty input or
non-finite values, so a silent broadcast can never produce a plausible number.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["mae", "nasa_score", "pr_auc", "rmse"]


def _pair(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, names: tuple[str, str] = ("y_true", "y_pred")
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("metrics need at least one value")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("metrics need finite values")
    return a.reshape(-1), b.reshape(-1)


def rmse(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Root mean squared error."""
    a, b = _pair(y_true, y_pred)
    return math.sqrt(float(np.mean(np.square(b - a))))


def mae(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Mean absolute error."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(b - a)))


def nasa_score(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """PHM08 scoring function (lower is better, 0 is perfect).

    With ``d = pred - true``: ``exp(-d/13) - 1`` for early predictions (``d < 0``)
    and ``exp(d/10) - 1`` for late ones, summed over units. Late predictions cost
    more because a missed failure is worse than an early maintenance visit.
    Absurdly large errors give ``inf``.
    """
    a, b = _pair(y_true, y_pred)
    d = b - a
    # An error of more than ~7000 cycles overflows float64: the score is then +inf,
    # which is the honest value, so the overflow warning is silenced.
    with np.errstate(over="ignore"):
        early = np.expm1(-d[d < 0] / 13.0)
        late = np.expm1(d[d >= 0] / 10.0)
    return float(early.sum() + late.sum())


def pr_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (AP).

    ``AP = Σ_k (R_k - R_{k-1}) · P_k`` over the distinct score thresholds, from the
    highest down; tied scores form one threshold (no interpolation), matching
    scikit-learn's ``average_precision_score``. Labels must be 0/1 (or bool).
    All-positive labels give 1.0 (every threshold has precision 1); with no
    positive label recall is undefined and the result is ``nan``.
    """
    y, s = _pair(labels, scores, ("labels", "scores"))
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    n_pos = float(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    tps = np.cumsum(y_sorted)
    fps = np.cumsum(1.0 - y_sorted)
    # Keep the last position of each run of equal scores: one point per threshold.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tps, fps = tps[last], fps[last]
    precision = tps / (tps + fps)
    recall = tps / n_pos
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))
