"""The report's phone section: each variant's speed ceilings from the bytes it reads per token, and
the checked variant's KLD and answers on an arm64 build."""

from edgetune.report.phone_tables import phone_table


def test_the_phone_table_gives_each_variant_its_ceilings_and_the_checked_one_its_kld():
    def run(weights, adapter=0, tg=10.0):
        read = {"weights": weights, "adapter": adapter, "kv_cache_per_context_token": 12288}
        return {"completion": {"tg_tokens_per_second": tg}, "bytes_read_per_token": read}

    bench = {"threads": [1, 2], "variants": {"q8_0": run(500_000_000), "q4_k_m+lora": run(300_000_000, 10_000_000)}}
    variants = {
        "q8_0": {"files": [{"sha256": "a"}]},
        "q4_k_m+lora": {"files": [{"sha256": "b"}, {"sha256": "c"}]},
    }
    rows = [{"text": "一二三四五六七八九十" * 3, "margin_x86": -0.0341}, {"text": "好", "margin_x86": 2.5}]
    answers = {"prompts": 20, "same_answer": 19, "margin": "log P(负面) - log P(正面)"}
    answers |= {"same_label": 20, "max_margin_difference": 0.1, "fragile": [0], "rows": rows}
    phone = {
        "files": [{"name": "base", "sha256": "b"}, {"name": "lora", "sha256": "c"}],
        "aarch64_build": "an arm build",
        "kld": {"kld_mean": 0.00123, "kld_p99": 0.01, "kld_max": 0.05, "same_top_token": 0.98, "tokens_scored": 252},
        "answers": answers,
        "tokens_per_second": {"aarch64": {"prompt": 1.3}, "x86_64": {"prompt": 90.0}},
    }
    table = phone_table(variants, bench, phone, [17, 51, 77])
    # 17e9 / 5e8 = 34 tokens/s; the adapter's bytes count: 17e9 / 3.1e8 = 54.8
    assert "| q8_0 | 500 | 34 / 102 / 154 | 10.0 |  |" in table
    assert "| q4_k_m+lora | 310 | 55 / 165 / 248 | 10.0 | 0.0012 |" in table
    assert "the KV cache adds 12,288 bytes per token of context" in table
    assert "**q4_k_m+lora on an arm64 CPU's arithmetic.**" in table and "19 of 20 test prompts" in table
    assert "at most 0.100; 20 of 20 labels agree, and 1 prompt sits closer" in table
    assert "on a phone: “一二三四五六七八九十一二三四五六七八九十一二三四…” (-0.034)." in table

    other = dict(phone, files=[{"name": "base", "sha256": "z"}])
    assert "checked other files" in phone_table(variants, bench, other, [17])
    assert "No phone check yet" in phone_table(variants, bench, {}, [17])
