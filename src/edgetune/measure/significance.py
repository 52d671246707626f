"""How far the test split lets a reader trust a difference in accuracy.

Two variants scored on the same reviews differ only where their answers differ, so they are
compared on those reviews (McNemar's exact test): how many one gets wrong that the other gets
right, and the chance of a split at least that lopsided if the two were equally good. Each
accuracy on its own gets a 95% Wilson interval.
"""

from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_predictions


def accuracy_interval(accuracy: float, n: int, level: float = 0.95) -> list[float]:
    """The Wilson interval of an accuracy measured on n examples."""
    from scipy.stats import binomtest  # a second to import: not in every stage's start-up

    ci = binomtest(round(accuracy * n), n).proportion_ci(confidence_level=level, method="wilson")
    return [ci.low, ci.high]


def paired(reference: Path, variant: Path) -> dict:
    """The variant against the reference on the same examples (evaluate's predictions CSVs)."""
    ref, var = read_predictions(reference), read_predictions(variant)
    if [actual for actual, _ in ref] != [actual for actual, _ in var]:
        raise EdgetuneError(
            f"{variant}: its examples are not those of {reference}, so the two cannot be compared "
            "review by review. Evaluate both on the same test split (`dvc repro`)."
        )
    from scipy.stats import binomtest

    lost = sum(r == actual != v for (actual, r), (_, v) in zip(ref, var))
    gained = sum(v == actual != r for (actual, r), (_, v) in zip(ref, var))
    p_value = binomtest(gained, lost + gained).pvalue if lost + gained else 1.0
    return {"lost": lost, "gained": gained, "p_value": p_value}
