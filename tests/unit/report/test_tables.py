"""The report's tables: each imatrix variant beside its plain twin, each merged type beside its base
with the adapter."""


def test_the_report_sets_each_imatrix_variant_beside_its_plain_twin():
    from edgetune.report.tables import imatrix_table

    variants = {
        "f16": {"accuracy": 0.826},
        "q4_0": {"accuracy": 0.802, "kld_mean": 0.47},
        "q4_0-imatrix": {
            "accuracy": 0.824,
            "kld_mean": 0.1486,
            "vs_plain": {"lost": 3, "gained": 14, "p_value": 0.0127},
        },
        "iq2_xxs-imatrix": {"accuracy": 0.7},
    }
    lines = imatrix_table(variants, "accuracy")
    assert "| q4_0 | 80.2 | 82.4 | +2.2 | 0.013 | 0.4700 | 0.1486 |" in lines
    assert not any(line.startswith("| iq2_xxs") for line in lines)  # no plain twin to compare with
    assert imatrix_table({"f16": {"accuracy": 0.8}, "q4_0": {"accuracy": 0.8}}, "accuracy") == []
    dialogue = imatrix_table({"q4_0": {"perplexity": 6.0}, "q4_0-imatrix": {"perplexity": 5.5}}, "perplexity")
    assert "| q4_0 | 6.000 | 5.500 | -0.500 |  |  |  |" in dialogue


def test_the_report_sets_each_merged_type_beside_its_base_with_the_adapter():
    from edgetune.report.tables import lora_table

    variants = {
        "f16": {"accuracy": 0.826, "model_bytes": 1266e6},
        "q4_k_m": {"accuracy": 0.796, "kld_mean": 0.0662, "model_bytes": 491e6},
        "q4_k_m+lora": {"accuracy": 0.826, "kld_mean": 0.0012, "model_bytes": 500e6},
        "q8_0+lora": {"accuracy": 0.824, "model_bytes": 685e6},
    }  # no merged twin in this run
    bench = {
        "threads": [1, 2],
        "variants": {
            "q4_k_m": {"completion": {"tg_tokens_per_second": 59.3}},
            "q4_k_m+lora": {"completion": {"tg_tokens_per_second": 52.5}},
        },
        "adapter_cost": {"q4_k_m+lora": {"pp_cost": 0.07, "tg_cost": 0.1146}},
    }
    lines = lora_table(variants, "accuracy", bench)
    assert "| q4_k_m | 79.6 | 82.6 | 0.0662 | 0.0012 | 491 | 500 | 59.3 | 52.5 | 7% | 11% |" in lines
    assert not any(line.startswith("| q8_0") for line in lines) and "llama-completion at 2 threads" in "".join(lines)
    assert lora_table({"f16": {"accuracy": 0.8}, "q4_0": {"accuracy": 0.8}}, "accuracy", {}) == []
