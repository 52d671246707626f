"""Turning model outputs into labels and labels into metrics (scikit-learn)."""

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (a vocabulary row, or one row per token), in float64."""
    shifted = logits.astype(np.float64)
    shifted -= shifted.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def first_tokens(tokenize, words) -> list[int] | None:
    """The first token of each label word (`tokenize`: a word's tokens, no special ones); None
    where two words start with the same token, so a first token cannot tell them apart. Training's
    validation accuracy and phone-check's label margins decide between these."""
    first = [tokenize(w)[0] for w in words]
    return first if len(set(first)) == len(first) else None


def pick_label(scores: dict[str, float]) -> str:
    """The label whose answer has the highest log-probability (ties: the first label)."""
    return max(scores, key=scores.get)


def fit_offsets(
    scores: list[dict[str, float]], y_true: list[str], labels: list[str], rounds: int = 3
) -> dict[str, float]:
    """Per-label offsets for the label scores that maximise accuracy on these (validation) scores.

    A tuned model's label scores can lean towards one label; offsets fitted on the validation
    split and added on the test split correct that lean ("calibrate before use"). The first
    label stays at 0; for each other label, in turn, the offset is chosen among the points where
    an example changes label; among equally good ones, the smallest correction wins.
    """
    s = np.array([[row[label] for label in labels] for row in scores])
    y = np.array([labels.index(t) for t in y_true])
    offsets = np.zeros(len(labels))
    for _ in range(rounds if len(labels) > 2 else 1):
        for j in range(1, len(labels)):
            rivals = np.delete(s + offsets, j, axis=1).max(axis=1)
            flips = np.sort(rivals - s[:, j])  # the offset at which label j starts to win each example
            candidates = np.concatenate([[0.0, flips[0] - 1, flips[-1] + 1], (flips[1:] + flips[:-1]) / 2])

            def accuracy(c):
                trial = offsets.copy()
                trial[j] = c
                return ((s + trial).argmax(axis=1) == y).mean()

            accuracies = np.array([accuracy(c) for c in candidates])
            best = candidates[accuracies == accuracies.max()]
            offsets[j] = best[np.abs(best).argmin()]
    return dict(zip(labels, offsets.tolist()))


def apply_offsets(scores: list[dict[str, float]], offsets: dict[str, float]) -> list[dict[str, float]]:
    return [{label: v + offsets.get(label, 0.0) for label, v in row.items()} for row in scores]


def parse_answer(text: str, answers: dict[str, str]) -> str | None:
    """The label whose answer word appears first in a free answer; None when none appears."""
    found = [(text.find(word), label) for label, word in answers.items() if word in text]
    return min(found)[1] if found else None


def classification_metrics(y_true: list[str], y_pred: list[str | None], labels: list[str]) -> dict:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix.

    An unparsed prediction (None) counts as wrong for every class.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    unparsed = "<unparsed>"
    pred = [unparsed if p is None else p for p in y_pred]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, average=None, zero_division=0
    )
    macro = precision_recall_fscore_support(y_true, pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision": float(macro[0]),
        "recall": float(macro[1]),
        "f1": float(macro[2]),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": {
            "labels": labels,
            "matrix": confusion_matrix(y_true, pred, labels=labels).tolist(),  # rows: true, columns: predicted
        },
        "n_samples": len(y_true),
        "unparsed": sum(p is None for p in y_pred),
    }
