"""Metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.metrics import mae, nasa_score, pr_auc, rmse


def test_rmse_and_mae_literal() -> None:
    truth = [0.0, 0.0, 0.0, 0.0]
    pred = [1.0, -1.0, 3.0, -3.0]
    assert rmse(truth, pred) == pytest.approx(2.23606797749979)  # sqrt((1+1+9+9)/4)
    assert mae(truth, pred) == 2.0
    assert rmse([5.0], [5.0]) == 0.0
    assert mae(np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]])) == 1.5  # any matching shape


def test_nasa_score_literal_and_asymmetric() -> None:
    # Early by 10: exp(10/13) - 1; late by 10: exp(10/10) - 1.
    early = nasa_score([100.0], [90.0])
    late = nasa_score([100.0], [110.0])
    assert early == pytest.approx(1.1581055339484458)
    assert late == pytest.approx(1.718281828459045)
    assert late > early  # a missed failure costs more than an early visit
    assert nasa_score([100.0, 100.0], [90.0, 110.0]) == pytest.approx(2.8763873624075)
    assert nasa_score([10.0, 20.0], [10.0, 20.0]) == 0.0


def test_nasa_score_overflow_is_inf_not_a_warning() -> None:
    # filterwarnings=error would turn a RuntimeWarning into a failure here.
    assert nasa_score([0.0], [10_000.0]) == math.inf
    assert nasa_score([10_000.0], [0.0]) == math.inf


def test_pr_auc_literal() -> None:
    # Thresholds 0.9..0.5: (R, P) = (1/3, 1), (1/3, 1/2), (2/3, 2/3), (1, 3/4), (1, 3/5)
    # AP = 1/3·1 + 0 + 1/3·2/3 + 1/3·3/4 = 29/36.
    labels = [1, 0, 1, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert pr_auc(labels, scores) == pytest.approx(29 / 36)
    # Order of the inputs does not matter, only the scores.
    assert pr_auc(labels[::-1], scores[::-1]) == pytest.approx(29 / 36)


def test_pr_auc_ties_form_one_threshold() -> None:
    # 0.8: (R, P) = (1/2, 1); 0.5 (tie of a positive and a negative): (1, 2/3).
    assert pr_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.1]) == pytest.approx(5 / 6)
    # All scores tied: one threshold at which precision is the positive rate.
    assert pr_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_pr_auc_edge_cases() -> None:
    assert pr_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0  # perfect ranking
    assert pr_auc([1, 1, 1], [0.1, 0.5, 0.2]) == 1.0  # all positive
    assert math.isnan(pr_auc([0, 0, 0], [0.1, 0.5, 0.2]))  # no positive: undefined
    assert pr_auc(np.array([True, False]), np.array([0.9, 0.1])) == 1.0
    # Worst ranking of one positive among four: precision 1/4 when it is recalled.
    assert pr_auc([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.25)


@pytest.mark.parametrize("metric", [rmse, mae, nasa_score, pr_auc])
def test_shape_and_value_checks(metric: object) -> None:
    fn = metric  # keeps the call sites below short
    assert callable(fn)
    with pytest.raises(ValueError, match="shapes differ"):
        fn([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        fn([[1.0], [0.0]], [1.0, 0.0])  # no silent broadcasting
    with pytest.raises(ValueError, match="at least one"):
        fn([], [])
    with pytest.raises(ValueError, match="finite"):
        fn([1.0, 0.0], [float("nan"), 0.0])


def test_pr_auc_rejects_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        pr_auc([0, 2], [0.1, 0.2])
