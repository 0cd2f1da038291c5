import numpy as np
import pytest

from vtfpar.attributes import AttributeSet
from vtfpar.metrics import compute_metrics, prior_baselines

ATTRS = AttributeSet("t", ("hat: yes", "colour: red", "colour: blue"))


def test_metrics_by_hand():
    gt = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1]])
    probs = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.4], [0.1, 0.3, 0.6]])
    m = compute_metrics(probs, gt, ATTRS.names, ATTRS.groups, threshold=0.5)
    # pred = [[1,1,0],[0,1,0],[0,0,1]]
    # hat: P=2 TP=1, N=1 TN=1 -> (0.5+1)/2; red: P=1 TP=1, N=2 TN=1 -> (1+0.5)/2; blue: P=2 TP=1, N=1 TN=1
    assert m["mA"] == pytest.approx(0.75)
    # per sample: inter/union/|pred|/|gt| = (2,2,2,2), (0,2,1,1), (1,2,1,2)
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    prec, rec = (1 + 0 + 1) / 3, (1 + 0 + 0.5) / 3
    assert m["precision"] == pytest.approx(prec) and m["recall"] == pytest.approx(rec)
    assert m["f1"] == pytest.approx(2 * prec * rec / (prec + rec))
    assert m["f1_per_sample"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    # colour group argmax: sample0 red (true red), sample1 red (true blue), sample2 blue (true blue)
    assert m["multiclass_groups"]["colour"]["accuracy"] == pytest.approx(2 / 3)
    assert m["multiclass_groups"]["colour"]["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # grouped: hat group TP1 FP0 TN1 FN1; colour group TP2 FP1 TN2 FN1
    g = m["grouped"]
    assert g["accuracy"] == pytest.approx((2 / 3 + 4 / 6) / 2)
    assert g["f1"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 2 / 3) / 2)


def test_empty_predictions_and_labels_are_guarded():
    gt = np.zeros((2, 3))
    m = compute_metrics(np.zeros((2, 3)), gt, ATTRS.names, ATTRS.groups)
    assert m["accuracy"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0 and m["mA"] == 1.0
    m = compute_metrics(np.ones((2, 3)), gt, ATTRS.names, ATTRS.groups)
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and np.isfinite(m["mA"])


def test_majority_baseline_predicts_the_most_frequent_group_value():
    train = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 1]])
    test = np.array([[0, 1, 0], [0, 0, 1]])
    b = prior_baselines(train, test, ATTRS.names, ATTRS.groups)
    # majority predicts [0, 1, 0] for everyone: sample 0 exact, sample 1 wrong
    assert b["majority"]["accuracy"] == pytest.approx(0.5)
    assert b["all_positive"]["recall"] == 1.0
