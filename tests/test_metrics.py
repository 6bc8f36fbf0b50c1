import numpy as np
import pytest

from hsfm_core.metrics import group_metrics, wilson_interval

WATERBIRDS_TRAIN = [3498, 184, 56, 1057]


def test_wilson_interval_known_values():
    # 8/10 correct: Wilson 95% = [0.4902, 0.9433] (textbook value)
    lo, hi = wilson_interval(np.array([8]), np.array([10]))[0]
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(np.array([0]), np.array([5]))[0]
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.4345, abs=1e-4)
    assert np.isnan(wilson_interval(np.array([0]), np.array([0]))).all()


def test_group_metrics_hand_computed():
    # group sizes 4, 2, 2, 2; correct 4, 1, 0, 2
    g = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    y = g // 2
    pred = y.copy()
    pred[5] = 1 - y[5]
    pred[6] = 1 - y[6]
    pred[7] = 1 - y[7]
    m = group_metrics(pred, y, g, 4, WATERBIRDS_TRAIN)
    assert m["group_acc"] == [1.0, 0.5, 0.0, 1.0]
    assert m["group_n"] == [4, 2, 2, 2]
    assert m["wga"] == 0.0 and m["worst_group"] == 2
    assert m["avg_plain"] == pytest.approx(7 / 10)
    assert m["mean_group"] == pytest.approx(2.5 / 4)
    expected_adjusted = (3498 * 1.0 + 184 * 0.5 + 56 * 0.0 + 1057 * 1.0) / (3498 + 184 + 56 + 1057)
    assert m["avg_adjusted"] == pytest.approx(expected_adjusted)
    assert m["avg_adjusted"] == pytest.approx(4647 / 4795, abs=1e-12)  # 0.96913


def test_empty_group_and_more_groups():
    g = np.array([0, 0, 2, 2, 4])
    y = np.array([0, 0, 1, 1, 0])
    m = group_metrics(y, y, g, 6)
    assert m["group_acc"] == [1.0, None, 1.0, None, 1.0, None]
    assert m["group_ci"][1] == [None, None]
    assert m["worst_group"] == 0 and m["avg_adjusted"] is None
