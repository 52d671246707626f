"""phone-check's parts that need no emulator: reading a bundle, the labels it compares, and the
report's phone section. The check itself runs on the tiny pipeline's bundle (test_pipeline.py)."""

import shutil

import pytest

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import sha256_file
from edgetune.report.phone_tables import phone_table
from edgetune.ship.phone import label_tokens, read_bundle


def bundle(folder, gguf, lora=None):
    """A bundle as export writes it, of the files phone-check reads."""
    folder.mkdir()
    files = [shutil.copy(gguf, folder / "m-base-q8_0.gguf")]
    if lora:
        files.append(shutil.copy(lora, folder / "m-lora.gguf"))
    (folder / "SHA256SUMS").write_text("".join(f"{sha256_file(f)}  {f.name}\n" for f in files))
    (folder / "Modelfile").write_text(
        f"FROM ./{files[0].name}\n" + (f"ADAPTER ./{files[1].name}\n" if lora else "") + "PARAMETER temperature 0.7\n"
    )
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    return folder


def test_a_bundle_names_its_model_and_adapter_and_every_file_is_checked(tmp_path, tiny_gguf):
    files, template, sums = read_bundle(bundle(tmp_path / "with", tiny_gguf, lora=tiny_gguf))
    assert sums == {name: sha256_file(tiny_gguf) for name in ("m-base-q8_0.gguf", "m-lora.gguf")}
    assert (files.gguf.name, files.lora.name, template) == (
        "m-base-q8_0.gguf",
        "m-lora.gguf",
        "{{ messages[0]['content'] }}",
    )
    files, _, _ = read_bundle(bundle(tmp_path / "without", tiny_gguf))
    assert files.gguf.name == "m-base-q8_0.gguf" and files.lora is None

    changed = bundle(tmp_path / "changed", tiny_gguf)
    with (changed / "m-base-q8_0.gguf").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(EdgetuneError, match=r"m-base-q8_0\.gguf: missing or not the file SHA256SUMS names"):
        read_bundle(changed)
    (changed / "Modelfile").unlink()
    with pytest.raises(EdgetuneError, match=r"Modelfile: not found; is .* a bundle written by `edgetune export`"):
        read_bundle(changed)


def test_labels_are_told_apart_by_their_first_token(tiny_gguf):
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(tiny_gguf), vocab_only=True, verbose=False)
    first = [vocab.tokenize(w.encode(), add_bos=False, special=False)[0] for w in ("正面", "负面")]
    assert label_tokens(vocab, {"positive": "正面", "negative": "负面"}) == first
    with pytest.raises(EdgetuneError, match="data.labels .* start with the same token"):
        label_tokens(vocab, {"positive": "正面", "mixed": "正面负面"})


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
