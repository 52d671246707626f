"""Label scoring and metrics: the answer parsed, the label picked, offsets that correct a model
leaning to one label, and the metrics against hand counts."""

import numpy as np
import pytest
from conftest import LABELS

from edgetune.core.labels import (
    apply_offsets,
    classification_metrics,
    fit_offsets,
    log_softmax,
    parse_answer,
    pick_label,
)


def test_parse_answer_takes_the_first_label_word():
    assert parse_answer("这段文本的情感是负面的", LABELS) == "negative"
    assert parse_answer("正面。虽然有负面的地方", LABELS) == "positive"
    assert parse_answer("这段文本描述了", LABELS) is None


def test_log_softmax_and_pick_label():
    lp = log_softmax(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert np.isclose(np.exp(lp).sum(), 1.0) and np.argmax(lp) == 2
    assert pick_label({"negative": -3.2, "positive": -0.1}) == "positive"


def test_fit_offsets_corrects_a_model_that_leans_to_one_label():
    rng = np.random.default_rng(0)
    y = ["positive"] * 50 + ["negative"] * 50
    margin = np.where(np.array(y) == "positive", 1.0, -1.0) + rng.normal(0, 0.5, 100) - 2.0  # leans negative by 2
    scores = [{"negative": 0.0, "positive": float(m)} for m in margin]
    raw = np.mean([pick_label(s) == t for s, t in zip(scores, y)])
    offsets = fit_offsets(scores, y, ["negative", "positive"])
    fixed = np.mean([pick_label(s) == t for s, t in zip(apply_offsets(scores, offsets), y)])
    assert offsets["negative"] == 0 and 1.0 < offsets["positive"] < 3.0
    assert raw < 0.7 and fixed > 0.9
    balanced = [{"negative": 0.0, "positive": 2.0 * (t == "positive") - 1.0} for t in y]
    assert fit_offsets(balanced, y, ["negative", "positive"])["positive"] == 0  # nothing to correct: no change


def test_fit_offsets_with_three_labels():
    labels = ["a", "b", "c"]
    scores = [{"a": 0.0, "b": -3.0 + (t == "b") * 2, "c": -3.0 + (t == "c") * 2} for t in labels * 10]
    offsets = fit_offsets(scores, labels * 10, labels)
    assert [pick_label(s) for s in apply_offsets(scores, offsets)] == labels * 10


def test_classification_metrics_match_hand_counts():
    y_true = ["positive", "positive", "negative", "negative", "negative"]
    y_pred = ["positive", "negative", "negative", "negative", None]
    m = classification_metrics(y_true, y_pred, ["negative", "positive"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"]["matrix"] == [[2, 0], [1, 1]]  # the unparsed answer is in neither column
    assert m["per_class"]["positive"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["negative"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["negative"]["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["unparsed"] == 1 and m["n_samples"] == 5
