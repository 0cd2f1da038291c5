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
    # per attribute (per_attribute.csv, the heatmap): hat TP1 FP0 FN1, red TP1 FP1 FN0, blue TP1 FP0 FN1
    per = {a["name"]: a for a in m["per_attribute"]}
    for name, positives, ma, precision, recall in (("hat", 2, 0.75, 1.0, 0.5), ("colour: red", 1, 0.75, 0.5, 1.0),
                                                   ("colour: blue", 2, 0.75, 1.0, 0.5)):
        a = per[name]
        assert (a["positives"], a["mA"], a["precision"], a["recall"]) == pytest.approx(
            (positives, ma, precision, recall)), name
        assert a["f1"] == pytest.approx(2 * precision * recall / (precision + recall)), name


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


def test_a_probability_at_the_threshold_is_a_positive_and_the_threshold_is_the_one_given():
    """``pred = p >= threshold`` (README); the paper's code evaluates at 0.45."""
    gt = np.array([[1, 1, 0], [0, 0, 1]])
    at = compute_metrics(np.array([[0.5, 0.5, 0.2], [0.2, 0.2, 0.5]]), gt, ATTRS.names, ATTRS.groups, threshold=0.5)
    assert at["f1"] == 1.0 and at["mA"] == 1.0 and at["threshold"] == 0.5
    probs = np.array([[0.47, 0.9, 0.1], [0.1, 0.46, 0.8]])  # between 0.45 and 0.5: hat of 0, red of 1
    low = compute_metrics(probs, gt, ATTRS.names, ATTRS.groups, threshold=0.45)
    high = compute_metrics(probs, gt, ATTRS.names, ATTRS.groups, threshold=0.5)
    assert low["threshold"] == 0.45
    assert low["recall"] == 1.0 and low["precision"] == pytest.approx((1 + 0.5) / 2)
    assert high["recall"] == pytest.approx((0.5 + 1) / 2) and high["precision"] == 1.0


def test_majority_baseline_breaks_an_even_binary_attribute_towards_positive():
    """A binary attribute positive in exactly half the training clips is predicted positive (ratio >= 0.5)."""
    train = np.array([[1, 1, 0], [0, 0, 1]])  # hat 1/2; colour: red and blue tie, argmax takes the first
    test = np.array([[1, 1, 0], [0, 1, 0]])
    b = prior_baselines(train, test, ATTRS.names, ATTRS.groups)["majority"]
    assert b["per_attribute_f1"] == pytest.approx({"hat": 2 / 3, "colour: red": 1.0, "colour: blue": 0.0})
    assert b["recall"] == 1.0 and b["precision"] == pytest.approx((1 + 0.5) / 2)


def test_macro_f1_of_a_group_averages_the_values_present_in_the_ground_truth():
    """A colour no test clip has is left out of the group's macro F1 (not counted as 0), also when it is guessed."""
    three = AttributeSet("t", ("colour: red", "colour: blue", "colour: green"))
    gt = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.0, 0.8, 0.1], [0.2, 0.7, 0.1]])  # 2nd guessed green
    m = compute_metrics(scores, gt, three.names, three.groups)["multiclass_groups"]["colour"]
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)  # red: P 1 R 1/2; blue: 1; green: absent
