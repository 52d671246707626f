"""The recommendation: the smallest variant close enough to f16, and the accuracy-size frontier."""

from conftest import committed


def test_the_recommended_variant_is_the_smallest_close_enough_to_f16():
    from edgetune.report.recommend import recommend

    def variant(mb, accuracy, kld=None):
        v = {"model_bytes": mb * 10**6, "accuracy": accuracy}
        return v if kld is None else v | {"kld_mean": kld}

    variants = {
        "tfidf": {"accuracy": 0.80},
        "base": variant(491, 0.70),
        "f16": variant(1266, 0.826),
        "q8_0": variant(676, 0.826, 0.002),
        "q5_k_m": variant(560, 0.820, 0.01),
        "q4_k_m": variant(491, 0.800, 0.03) | {"vs_f16": {"lost": 20, "gained": 7, "p_value": 0.019}},
        "q4_0": variant(470, 0.824, 0.09),
    }
    choice = recommend(variants, committed("recommend", accuracy_tolerance=0.01, max_kld=0.05), "accuracy")
    assert choice["variant"] == "q5_k_m"  # q4_k_m loses 2.6 points; q4_0 keeps accuracy but drifts (KLD 0.09)
    assert (
        "q4_k_m loses 2.6 points of accuracy (allowed 1.0; 20 examples lost and 7 gained, p = 0.019)"
        in choice["reason"]
        and "q4_0 mean KLD 0.0900" in choice["reason"]
    )
    assert (
        recommend(variants, committed("recommend", accuracy_tolerance=0.03, max_kld=0.1), "accuracy")["variant"]
        == "q4_0"
    )
    assert (
        recommend(variants, committed("recommend", accuracy_tolerance=0.0, max_kld=0.001), "accuracy")["variant"]
        == "f16"
    )
    assert choice["frontier"] == ["q4_0", "q8_0"]  # q4_k_m, q5_k_m, f16: a smaller variant scores as well
    dialogue = {
        "f16": {"model_bytes": 10, "perplexity": 5.0},
        "q8_0": {"model_bytes": 6, "perplexity": 5.1},
        "q4_k_m": {"model_bytes": 4, "perplexity": 5.6},
    }
    assert recommend(dialogue, committed("recommend", perplexity_tolerance=0.05), "perplexity")["variant"] == "q8_0"
