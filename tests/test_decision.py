"""The decision rule (mediflow/decision.py) and the metrics (mediflow/metrics.py), against values
worked out by hand in this file or by scikit-learn, never by the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mediflow.decision import (
    REPORTED_SCALE,
    DecisionRule,
    centred,
    choose_threshold,
    decide,
    fit_calibration,
    positive_index,
    softmax,
)
from mediflow.metrics import compute_metrics

NAMES = ["NORMAL", "PNEUMONIA"]


def sensitivity(p, is_pos, t) -> float:
    p, is_pos = np.asarray(p), np.asarray(is_pos, dtype=bool)
    return float((p[is_pos] >= t).mean())


# -- softmax ---------------------------------------------------------------------------------------
def test_softmax_applies_temperature_then_bias():
    # softmax([0, 2] / 2) = [1, e] / (1 + e)
    assert softmax(np.array([[0.0, 2.0]]), 2.0)[0] == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])
    # bias ln 3 on class 1: odds 3 -> [0.25, 0.75]
    assert softmax(np.array([[0.0, 0.0]]), 1.0, [0.0, math.log(3)])[0] == pytest.approx([0.25, 0.75])
    # both: logits [0, 4] / 4 + [0, ln 2 - 1] -> odds e * 2 / e = 2 -> [1/3, 2/3]
    assert softmax(np.array([[0.0, 4.0]]), 4.0, [0.0, math.log(2) - 1])[0] == pytest.approx([1 / 3, 2 / 3])
    # huge logits stay finite
    assert softmax(np.array([[1000.0, 0.0]]))[0] == pytest.approx([1.0, 0.0])


# -- choose_threshold ------------------------------------------------------------------------------
POS = [0.2, 0.4, 0.6, 0.8, 0.9]
NEG = [0.1, 0.5]


@pytest.mark.parametrize("floor, expected", [
    (0.97, 0.2),  # 5 of 5 positives needed: the lowest positive
    (0.8, 0.4),   # 4 of 5
    (0.6, 0.6),   # 3 of 5
    (0.2, 0.9),   # 1 of 5
    (1.0, 0.2),   # every positive
    (0.0, 1.0),   # no positive needed: nothing called positive below 1
])
def test_choose_threshold_is_the_highest_meeting_the_floor(floor, expected):
    p = np.array(POS + NEG)
    is_pos = np.array([True] * 5 + [False] * 2)
    t = choose_threshold(p, is_pos, floor)
    assert t == expected
    assert sensitivity(p, is_pos, t) >= floor
    higher = [s for s in POS if s > t]
    if higher:  # the next candidate up would break the floor: t is the highest that keeps it
        assert sensitivity(p, is_pos, min(higher)) < floor


def test_choose_threshold_with_ties_counts_every_tied_positive():
    p = np.array([0.3, 0.7, 0.7, 0.7, 0.9, 0.1, 0.75])
    is_pos = np.array([1, 1, 1, 1, 1, 0, 0], dtype=bool)
    # 3 of 5 needed: the 3rd highest positive is 0.7, and all three 0.7s count: sensitivity 4/5
    assert choose_threshold(p, is_pos, 0.5) == 0.7
    assert sensitivity(p, is_pos, 0.7) == 0.8
    # 5 of 5 (0.85 * 5 = 4.25 -> 5): down to 0.3
    assert choose_threshold(p, is_pos, 0.85) == 0.3
    # 4 of 5 (0.8): still 0.7 thanks to the ties
    assert choose_threshold(p, is_pos, 0.8) == 0.7


def test_choose_threshold_edge_cases():
    # all positives equal: that value, whatever the floor
    p = np.array([0.6, 0.6, 0.6, 0.6, 0.2, 0.9])
    is_pos = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    assert choose_threshold(p, is_pos, 0.97) == 0.6 and choose_threshold(p, is_pos, 0.25) == 0.6
    # no positives, or no negatives: no basis for a choice
    assert choose_threshold(np.array([0.1, 0.9]), np.array([False, False]), 0.97) == 0.5
    assert choose_threshold(np.array([0.1, 0.9]), np.array([True, True]), 0.97) == 0.5
    # floor 1.0 with a positive scored 0.05: it must still be called positive
    p = np.array([0.05, 0.99, 0.5])
    is_pos = np.array([True, True, False])
    assert choose_threshold(p, is_pos, 1.0) == 0.05 and sensitivity(p, is_pos, 0.05) == 1.0


# -- calibration -----------------------------------------------------------------------------------
def test_fit_calibration_recovers_a_known_temperature_and_bias():
    rng = np.random.default_rng(0)
    true_t, true_b = 2.5, np.array([-0.4, 0.4])
    z = rng.normal(0, 4, size=(20000, 2))
    p = softmax(z, true_t, true_b)
    y = (rng.random(len(z)) < p[:, 1]).astype(int)
    t, b = fit_calibration(z, y)
    assert t == pytest.approx(true_t, rel=0.05)
    assert b == pytest.approx(list(true_b), abs=0.06)
    assert sum(b) == pytest.approx(0.0, abs=1e-9)  # centred: only the difference matters


def test_fit_calibration_three_classes():
    rng = np.random.default_rng(1)
    true_t, true_b = 0.7, np.array([0.5, -0.2, -0.3])
    z = rng.normal(0, 1.5, size=(30000, 3))
    p = softmax(z, true_t, true_b)
    y = np.array([rng.choice(3, p=row) for row in p])
    t, b = fit_calibration(z, y)
    assert t == pytest.approx(true_t, rel=0.05)
    assert b == pytest.approx(list(true_b), abs=0.06)


# -- the centred scale and the call ------------------------------------------------------------------
def test_centred_probability_by_hand():
    # odds(p) / odds(t): p 0.9 (odds 9), t 0.75 (odds 3) -> odds 3 -> 0.75
    assert centred(0.9, 0.75) == pytest.approx(0.75)
    # p 0.5 (odds 1), t 0.8 (odds 4) -> odds 1/4 -> 0.2
    assert centred(0.5, 0.8) == pytest.approx(0.2)
    # the film: P 0.9317 below t 0.937 -> 13.641 / 14.873 = 0.9172 -> 0.4784
    assert centred(0.9317, 0.937) == pytest.approx(0.47840, abs=1e-5)
    # at the operating point exactly one half, for any t
    for t in (1e-6, 0.03, 0.5, 0.937, 0.999999, 1.0):
        assert centred(t, t) == 0.5


def test_centred_is_monotone_and_flips_exactly_at_the_threshold():
    for t in (0.02, 0.3, 0.937, 0.9995):
        below = np.nextafter(t, 0.0)
        p = np.sort(np.concatenate([np.linspace(0, 1, 20001), [below, t, np.nextafter(t, 1.0)]]))
        q = centred(p, t)
        assert np.all(np.diff(q) >= 0) and q.min() >= 0 and q.max() <= 1
        assert np.array_equal(q >= 0.5, p >= t)
        assert centred(below, t) < 0.5 <= centred(t, t)
        rule = DecisionRule(tuple(NAMES), threshold=t, pos=1)
        for pp in (below, t):
            f = rule.finding(np.array([1 - pp, pp]), 0.7)
            assert f["prediction"] == ("PNEUMONIA" if pp >= t else "NORMAL")


def test_finding_never_contradicts_itself_across_a_fine_sweep():
    rule = DecisionRule(tuple(NAMES), temperature=1.0, threshold=0.937, pos=1)
    for p in np.linspace(0.85, 0.99, 2801):
        f = rule.finding(np.array([1 - p, p]), 0.70)
        probs = f["probabilities"]
        assert f["prediction"] == ("PNEUMONIA" if p >= 0.937 else "NORMAL")
        assert f["confidence"] == probs[f["prediction"]] and f["confidence"] >= 0.5
        assert probs[f["prediction"]] >= max(probs.values())
        assert f["needs_review"] == (f["confidence"] < 0.70)
        assert f["threshold"] == 0.5
        assert f["operating_point"] == {"positive_class": "PNEUMONIA", "calibrated_threshold": 0.937,
                                        "scale": REPORTED_SCALE}
    # the example: NORMAL with confidence 0.0683 becomes NORMAL 0.5216, flagged for review
    f = rule.finding(np.array([0.0683, 0.9317]), 0.70)
    assert f["prediction"] == "NORMAL" and f["probabilities"] == {"NORMAL": 0.5216, "PNEUMONIA": 0.4784}
    assert f["confidence"] == 0.5216 and f["needs_review"] is True


def test_decide_and_positive_index():
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.35, 0.65]])
    assert decide(probs, 0.65, 1).tolist() == [1, 0, 1]
    assert decide(probs, 0.66, 1).tolist() == [1, 0, 0]
    assert decide(probs, 0.5, 0).tolist() == [1, 0, 1]  # positive class first: P(class 0) >= 0.5
    assert decide(probs, None, None).tolist() == [1, 0, 1]
    assert positive_index(["NORMAL", "PNEUMONIA"]) == 1
    assert positive_index(["PNEUMONIA", "NORMAL"]) == 0
    assert positive_index(["A", "B"]) == 1
    assert positive_index(["A", "B", "C"]) is None


def test_rule_from_checkpoints_old_new_ensemble_and_multiclass():
    single = {"class_names": NAMES, "temperature": 2.0, "logit_bias": [-0.5, 0.5], "threshold": 0.9,
              "positive_class": "PNEUMONIA"}
    r = DecisionRule.from_checkpoint(single)
    assert (r.temperature, r.logit_bias, r.threshold, r.pos) == (2.0, (-0.5, 0.5), 0.9, 1)
    # logits [0, 2] -> [0, 1] + bias -> [-0.5, 1.5]: P = sigmoid(2)
    assert r.probabilities(np.array([[0.0, 2.0]]))[0, 1] == pytest.approx(1 / (1 + math.exp(-2)))
    # an old checkpoint: no bias, temperature None
    old = {"class_names": NAMES, "temperature": None, "threshold": 0.8}
    r = DecisionRule.from_checkpoint(old)
    assert (r.temperature, r.logit_bias, r.threshold, r.pos) == (1.0, None, 0.8, 1)
    assert r.finding(np.array([0.25, 0.75]), 0.7)["prediction"] == "NORMAL"
    # an ensemble as built from its members: T 1, no bias of its own
    ens = {"format": "mediflow-ensemble", "members": [single, single], "class_names": NAMES, "threshold": 0.7,
           "temperature": 1.0, "positive_class": "PNEUMONIA"}
    r = DecisionRule.from_checkpoint(ens)
    assert (r.temperature, r.logit_bias, r.threshold) == (1.0, None, 0.7)
    # three classes: argmax of calibrated probabilities, reported unchanged
    multi = {"class_names": ["A", "B", "C"], "temperature": 1.0, "threshold": 0.4}
    r = DecisionRule.from_checkpoint(multi)
    assert r.pos is None and r.threshold is None
    f = r.finding(np.array([0.2, 0.45, 0.35]), 0.7)
    assert f["prediction"] == "B" and f["confidence"] == 0.45 and f["threshold"] is None
    assert f["probabilities"] == {"A": 0.2, "B": 0.45, "C": 0.35} and f["operating_point"] is None


# -- metrics ---------------------------------------------------------------------------------------
# 8 films, threshold 0.5. Worked by hand:
#   labels  0    0    0    1    1    1    1    1
#   P(pos)  0.1  0.6  0.3  0.9  0.8  0.4  0.7  0.2
#   call    0    1    0    1    1    0    1    0
# TP 3 (0.9 0.8 0.7), FN 2 (0.4 0.2), TN 2 (0.1 0.3), FP 1 (0.6)
# sensitivity 3/5, specificity 2/3, accuracy 5/8, balanced accuracy (0.6 + 2/3) / 2
# AUC: positive-negative pairs ranked right: 0.9: 3, 0.8: 3, 0.4: 2, 0.7: 3, 0.2: 1 -> 12 / 15
# PNEUMONIA precision 3/4, recall 3/5, F1 2*0.75*0.6/1.35 = 2/3, support 5
# NORMAL    precision 2/4, recall 2/3, F1 2*0.5*(2/3)/(0.5+2/3) = 4/7, support 3
HAND_LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 1])
HAND_P = np.array([0.1, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.2])
HAND = {"n": 8, "accuracy": 5 / 8, "balanced_accuracy": (0.6 + 2 / 3) / 2, "sensitivity": 0.6,
        "specificity": 2 / 3, "auc": 0.8, "threshold": 0.5, "positive_class": "PNEUMONIA",
        "confusion_matrix": [[2, 1], [2, 3]],
        "per_class": {"NORMAL": {"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3},
                      "PNEUMONIA": {"precision": 0.75, "recall": 0.6, "f1": 2 / 3, "support": 5}}}


def assert_metrics(m: dict, expected: dict) -> None:
    for key, value in expected.items():
        if key == "per_class":
            for cls, d in value.items():
                for k, v in d.items():
                    assert m["per_class"][cls][k] == pytest.approx(v), (cls, k)
        elif isinstance(value, float):
            assert m[key] == pytest.approx(value), key
        else:
            assert m[key] == value, key


def test_compute_metrics_worked_example():
    probs = np.stack([1 - HAND_P, HAND_P], axis=1)
    m = compute_metrics(HAND_LABELS, probs, NAMES, threshold=0.5)
    # every key of metrics.json is checked here: a new metric needs a new expectation
    assert set(m) == set(HAND) | {"class_names"}
    assert m["class_names"] == NAMES
    assert_metrics(m, HAND)


def test_compute_metrics_with_the_positive_class_first():
    # the same films with the class order reversed: every figure about PNEUMONIA must stay the same
    labels = 1 - HAND_LABELS
    probs = np.stack([HAND_P, 1 - HAND_P], axis=1)
    m = compute_metrics(labels, probs, ["PNEUMONIA", "NORMAL"], threshold=0.5)
    expected = {**HAND, "confusion_matrix": [[3, 2], [1, 2]]}
    assert_metrics(m, expected)


def test_compute_metrics_threshold_moves_the_call_not_the_auc():
    probs = np.stack([1 - HAND_P, HAND_P], axis=1)
    m = compute_metrics(HAND_LABELS, probs, NAMES, threshold=0.2)
    # calls at >= 0.2: every positive, and negatives 0.6 and 0.3
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(1 / 3)
    assert m["confusion_matrix"] == [[1, 2], [0, 5]] and m["auc"] == pytest.approx(0.8)


def test_compute_metrics_agrees_with_scikit_learn():
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        recall_score,
        roc_auc_score,
    )

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    probs = np.stack([1 - p, p], axis=1)
    t = 0.55
    m = compute_metrics(y, probs, NAMES, threshold=t)
    pred = (p >= t).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred)
    for i, name in enumerate(NAMES):
        assert m["per_class"][name] == pytest.approx({"precision": prec[i], "recall": rec[i], "f1": f1[i],
                                                      "support": sup[i]})


def test_compute_metrics_multiclass_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    probs = softmax(logits)
    m = compute_metrics(y, probs, ["A", "B", "C"], threshold=None)
    assert "sensitivity" not in m and "positive_class" not in m
    assert m["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_compute_metrics_one_class_present_gives_nan_not_an_error():
    probs = np.array([[0.2, 0.8], [0.7, 0.3]])
    m = compute_metrics(np.array([1, 1]), probs, NAMES, threshold=0.5)
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"]) and m["sensitivity"] == 0.5


def test_a_negative_call_is_never_shown_at_the_threshold():
    rule = DecisionRule(tuple(NAMES), threshold=0.8, pos=1)
    p = 0.8 - 1e-7  # p' = 0.49999969: rounds to 0.5, the threshold, beside a NORMAL call
    f = rule.finding(np.array([1 - p, p]), 0.7)
    assert f["prediction"] == "NORMAL" and f["probabilities"] == {"NORMAL": 0.5001, "PNEUMONIA": 0.4999}
    assert f["confidence"] == 0.5001
    f = rule.finding(np.array([0.2, 0.8]), 0.7)
    assert f["prediction"] == "PNEUMONIA" and f["probabilities"] == {"NORMAL": 0.5, "PNEUMONIA": 0.5}


# -- added after the mutation-testing pass (docs/testing.md, "Mutation testing") ----------------------
def test_choose_threshold_takes_0_1_labels_as_well_as_booleans():
    # 0/1 integers used as a mask would index films 0 and 1 instead of selecting the positives
    p = np.array(POS + NEG)
    assert choose_threshold(p, np.array([1] * 5 + [0] * 2), 0.8) == 0.4
    assert choose_threshold(p, [True] * 5 + [False] * 2, 0.8) == 0.4


def test_rule_finds_the_positive_class_by_name_whatever_its_index():
    # PNEUMONIA first and no positive_class stored: PNEUMONIA is still the class the threshold is on
    r = DecisionRule.from_checkpoint({"class_names": ["PNEUMONIA", "NORMAL"], "threshold": 0.9})
    assert r.pos == 0
    # p 0.95 (odds 19) at t 0.9 (odds 9): odds 19/9 -> 19/28
    f = r.finding(np.array([0.95, 0.05]), 0.7)
    assert f["prediction"] == "PNEUMONIA" and f["confidence"] == round(19 / 28, 4)
    assert r.finding(np.array([0.85, 0.15]), 0.7)["prediction"] == "NORMAL"
    # another finding named by the checkpoint
    r = DecisionRule.from_checkpoint({"class_names": ["EFFUSION", "CLEAR"], "threshold": 0.9,
                                      "positive_class": "EFFUSION"})
    assert r.pos == 0 and r.operating_point()["positive_class"] == "EFFUSION"


def test_ensemble_rule_applies_its_own_calibration_once_on_the_averaged_members():
    # The graph averages the members' calibrated probabilities (each member's T and bias live there);
    # the ensemble's own T and bias, fitted by site calibration, act once on the log of that average.
    member = {"class_names": NAMES, "temperature": 2.0, "logit_bias": [-0.5, 0.5], "threshold": 0.9}
    ens = {"format": "mediflow-ensemble", "members": [member, member], "class_names": NAMES, "threshold": 0.7,
           "temperature": 2.0, "logit_bias": [-1.0, 1.0]}
    r = DecisionRule.from_checkpoint(ens)
    assert (r.temperature, r.logit_bias, r.threshold, r.pos) == (2.0, (-1.0, 1.0), 0.7, 1)
    mean_p = np.array([[0.3, 0.7]])  # what the graph averaged
    z = (math.log(0.7) - math.log(0.3)) / 2.0 + 2.0
    assert r.probabilities(np.log(mean_p))[0, 1] == pytest.approx(1 / (1 + math.exp(-z)))
    # an ensemble as `mediflow ensemble` writes it (T 1, no bias) reports the members' average unchanged
    plain = DecisionRule.from_checkpoint({**ens, "temperature": 1.0, "logit_bias": None})
    assert plain.probabilities(np.log(mean_p))[0] == pytest.approx(mean_p[0])


def test_rule_without_bias_applies_its_temperature():
    r = DecisionRule(tuple(NAMES), temperature=2.0)
    assert r.probabilities(np.array([[0.0, 2.0]]))[0] == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])


def test_operating_point_is_reported_to_six_decimals():
    r = DecisionRule(tuple(NAMES), threshold=0.93712345, pos=1)
    assert r.operating_point()["calibrated_threshold"] == 0.937123


def test_centred_at_the_ends_of_the_scale_is_finite_and_silent():
    # p 0 or 1, t 0 or 1: clipped before the logits, so no divide-by-zero warning in a server log per film
    import warnings

    p = np.array([0.0, 0.3, 1.0])
    for t in (0.0, 1e-12, 0.5, 1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            q = centred(p, t)
        assert np.all(np.isfinite(q)) and np.array_equal(q >= 0.5, p >= t)


def test_float32_probabilities_are_judged_as_float64():
    # ONNX Runtime hands back float32. A threshold between two float32 values must be compared in float64:
    # numpy 2 compares float32 with a Python float in float32, which would call this film positive.
    p32 = np.float32(0.937)
    t = float(p32) + 1e-12
    assert np.float32(t) == p32 and float(p32) < t  # the film is below the operating point
    row32 = np.array([1 - p32, p32], dtype=np.float32)
    rule = DecisionRule(tuple(NAMES), threshold=t, pos=1)
    assert rule.finding(row32, 0.7) == rule.finding(row32.astype(np.float64), 0.7)
    assert rule.finding(row32, 0.7)["prediction"] == "NORMAL"
    assert centred(np.array([p32]), t)[0] < 0.5
    labels = np.array([1, 0])
    probs32 = np.array([row32, [0.9, 0.1]], dtype=np.float32)
    m32 = compute_metrics(labels, probs32, NAMES, threshold=t)
    assert m32["sensitivity"] == 0.0 and m32["confusion_matrix"] == [[1, 0], [1, 0]]


def test_compute_metrics_uses_the_positive_class_it_is_given():
    # the worked example with the finding named EFFUSION and listed first
    labels = 1 - HAND_LABELS
    probs = np.stack([HAND_P, 1 - HAND_P], axis=1)
    m = compute_metrics(labels, probs, ["EFFUSION", "NORMAL"], threshold=0.5, positive_class="EFFUSION")
    assert m["positive_class"] == "EFFUSION"
    assert (m["sensitivity"], m["specificity"], m["auc"]) == pytest.approx((0.6, 2 / 3, 0.8))


def test_compute_metrics_when_one_class_is_neither_present_nor_called():
    # an all-PNEUMONIA set, every film called PNEUMONIA: NORMAL gets a row of zeros, not a shifted array,
    # a precision of 1 for a class never called, or a balanced accuracy that looks like a real figure
    import warnings

    probs = np.array([[0.2, 0.8], [0.3, 0.7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning printed into an evaluation run
        m = compute_metrics(np.array([1, 1]), probs, NAMES, threshold=0.5)
    assert m["confusion_matrix"] == [[0, 0], [0, 2]]
    assert m["per_class"]["NORMAL"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["PNEUMONIA"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert m["accuracy"] == 1.0 and m["sensitivity"] == 1.0
    assert math.isnan(m["balanced_accuracy"]) and math.isnan(m["specificity"]) and math.isnan(m["auc"])


def test_compute_metrics_undefined_figures_are_nan_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # no PNEUMONIA film: sensitivity and AUC undefined; one TN and one FP: specificity 1/2
        m = compute_metrics(np.array([0, 0]), np.array([[0.9, 0.1], [0.2, 0.8]]), NAMES, threshold=0.5)
        assert math.isnan(m["sensitivity"]) and math.isnan(m["auc"]) and m["specificity"] == 0.5
        # three classes, C absent: a one-vs-rest AUC over the classes present would not be comparable
        probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
        m = compute_metrics(np.array([0, 1, 1]), probs, ["A", "B", "C"], threshold=None)
    assert math.isnan(m["auc"]) and m["accuracy"] == pytest.approx(2 / 3)
    assert m["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_softmax_defaults_rows_and_float32_logits():
    # the default is no calibration: T 1 -> odds 3 from logits [0, ln 3]
    assert softmax(np.array([[0.0, math.log(3)]]))[0] == pytest.approx([0.25, 0.75])
    # each row is shifted by its own maximum: a film with huge logits must not turn its neighbour into 0/0
    p = softmax(np.array([[1000.0, 0.0], [0.0, math.log(3)]]))
    assert p[1] == pytest.approx([0.25, 0.75])
    # ONNX Runtime's float32 logits give float64 probabilities, as computed from the float64 logits
    z32 = np.array([[0.0, 17.0], [3.1, -2.7]], dtype=np.float32)
    p32 = softmax(z32)
    assert p32.dtype == np.float64 and np.array_equal(p32, softmax(z32.astype(np.float64)))
    assert p32[0, 1] < 1.0  # 1 - 4.1e-8: in float32 it would round to exactly 1


def test_binary_model_without_a_threshold_is_called_by_argmax():
    probs = np.array([[0.3, 0.7], [0.8, 0.2]])
    assert decide(probs, None, 1).tolist() == [1, 0]
    m = compute_metrics(np.array([1, 0]), probs, NAMES, threshold=None)  # an ensemble member's AUC
    assert m["threshold"] is None and m["accuracy"] == 1.0 and m["auc"] == 1.0


def test_fit_calibration_falls_back_when_the_temperature_is_implausible():
    # a separable validation set with logit margins of 0.02: the NLL keeps falling as T -> 0 (about 0.001
    # when LBFGS stops), which would call every film with certainty; the documented answer is (1, zeros)
    z = np.array([[-0.01, 0.01]] * 20 + [[0.01, -0.01]] * 20)
    y = np.array([1] * 20 + [0] * 20)
    assert fit_calibration(z, y) == (1.0, [0.0, 0.0])
