"""Significance: two variants compared on the reviews where they disagree (McNemar's exact test),
and Wilson's interval for an accuracy."""

import numpy as np
import pytest

from edgetune.core.errors import EdgetuneError


def test_two_variants_are_compared_on_the_reviews_where_they_disagree(tmp_path):
    from math import comb

    from edgetune.core.files import write_predictions
    from edgetune.measure.significance import paired

    actual = ["positive"] * 6 + ["negative"] * 6
    flip = {"positive": "negative", "negative": "positive"}
    reference = [flip[a] if i == 0 else a for i, a in enumerate(actual)]  # misses review 0
    variant = [flip[a] if i in (1, 2, 3, 6) else a for i, a in enumerate(actual)]  # misses 1, 2, 3, 6; gets 0
    write_predictions(tmp_path / "f16.csv", actual, reference)
    write_predictions(tmp_path / "q4.csv", actual, variant)
    result = paired(tmp_path / "f16.csv", tmp_path / "q4.csv")
    assert (result["lost"], result["gained"]) == (4, 1)
    # McNemar's exact test: two-sided binomial on the 5 discordant reviews, P(X <= 1) + P(X >= 4) at one half
    assert result["p_value"] == pytest.approx(sum(comb(5, k) for k in (0, 1, 4, 5)) / 2**5)
    assert paired(tmp_path / "f16.csv", tmp_path / "f16.csv") == {"lost": 0, "gained": 0, "p_value": 1.0}
    write_predictions(tmp_path / "other.csv", actual[::-1], actual[::-1])
    with pytest.raises(EdgetuneError, match="other.csv: its examples are not those of"):
        paired(tmp_path / "f16.csv", tmp_path / "other.csv")


def test_accuracy_interval_is_wilsons():
    from edgetune.measure.significance import accuracy_interval

    z, n, acc = 1.959964, 500, 0.826
    centre = (acc + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(acc * (1 - acc) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert accuracy_interval(acc, n) == pytest.approx([centre - half, centre + half], abs=1e-5)
    low, high = accuracy_interval(1.0, 12)
    assert high == pytest.approx(1.0) and 0.7 < low < 0.8  # all right on 12 examples proves little
