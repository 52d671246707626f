"""prepare's cleaning, splitting and capping, on real reviews."""

import collections

import numpy as np
import pytest
from conftest import LABELS, committed

from edgetune.core.errors import EdgetuneError
from edgetune.data.prepare import cap, clean, split


def test_clean_strips_dedups_and_drops_conflicts():
    rows = [
        {"text": "  好评 ", "label": "positive"},
        {"text": "好评", "label": "positive"},  # duplicate after stripping
        {"text": "", "label": "negative"},
        {"text": "一般", "label": "positive"},
        {"text": "一般", "label": "negative"},  # same text, two labels: dropped entirely
        {"text": "太差", "label": "negative"},
    ]
    out, stats = clean(rows, committed("data", labels=LABELS), "test")
    assert sorted((r["text"], r["label"]) for r in out) == [("太差", "negative"), ("好评", "positive")]
    assert stats["dropped"] == {"duplicate": 2, "empty": 1, "conflicting_labels": 1}
    assert stats == {**stats, "raw": 6, "clean": 2}


def test_clean_rejects_unknown_labels_and_single_class():
    with pytest.raises(EdgetuneError, match="'neutral' are not in data.labels"):
        clean([{"text": "a", "label": "neutral"}], committed("data", labels=LABELS), "x.jsonl")
    with pytest.raises(EdgetuneError, match="only 1 class"):
        clean(
            [{"text": "a", "label": "positive"}, {"text": "b", "label": "positive"}],
            committed("data", labels=LABELS),
            "x.jsonl",
        )


def test_split_is_stratified_seeded_disjoint_and_capped(reviews):
    p = committed("data", labels=LABELS, split=[0.6, 0.2, 0.2], max_test=6, seed=3)
    parts = split(reviews, p)
    again = split(reviews, p)
    assert parts == again  # seeded
    texts = [set(r["text"] for r in parts[name]) for name in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len(parts["train"]) == 36 and len(parts["val"]) == 12
    assert collections.Counter(r["label"] for r in parts["test"]) == {"positive": 3, "negative": 3}
    assert collections.Counter(r["label"] for r in parts["val"]) == {"positive": 6, "negative": 6}
    other = split(reviews, committed("data", labels=LABELS, split=[0.6, 0.2, 0.2], max_test=6, seed=4))
    assert other["test"] != parts["test"]
    fewer = split(reviews, committed("data", labels=LABELS, split=[0.6, 0.2, 0.2], max_test=6, seed=3, max_train=10))
    assert len(fewer["train"]) == 10 and fewer["test"] == parts["test"]  # held-out splits stay put


def test_cap_balances_classes():
    rows = [{"text": str(i), "label": "a" if i < 90 else "b"} for i in range(100)]
    capped = cap(rows, 16, True, np.random.default_rng(0))
    assert collections.Counter(r["label"] for r in capped) == {"a": 8, "b": 8}
    assert cap(rows, None, True, np.random.default_rng(0)) == rows
