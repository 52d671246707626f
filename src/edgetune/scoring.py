"""Turning model outputs into labels and labels into metrics (scikit-learn)."""

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def pick_label(scores: dict[str, float]) -> str:
    """The label whose answer has the highest log-probability (ties: the first label)."""
    return max(scores, key=scores.get)


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
