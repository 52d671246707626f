"""Cleaning, splitting, template rendering, label scoring and metrics, on real data and tokenizer."""

import collections

import numpy as np
import pytest
from conftest import committed

from edgetune.core.errors import EdgetuneError
from edgetune.core.labels import (
    apply_offsets,
    classification_metrics,
    fit_offsets,
    log_softmax,
    parse_answer,
    pick_label,
)
from edgetune.core.prompts import ELLIPSIS, messages, render_prompt, truncate
from edgetune.data.prepare import cap, clean, split

LABELS = {"negative": "负面", "positive": "正面"}


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


def test_truncate_keeps_head_and_tail_on_character_boundaries(qwen_tokenizer):
    text = "开头很好。" * 30 + "但是最后非常失望"
    out, cut = truncate(text, qwen_tokenizer, max_tokens=20, head_tokens=6)
    assert cut and out.endswith("但是最后非常失望") and out.startswith("开头") and ELLIPSIS in out
    assert "\ufffd" not in out  # no character split in half
    n = len(qwen_tokenizer(out.replace(ELLIPSIS, ""), add_special_tokens=False)["input_ids"])
    assert n <= 21
    assert truncate("短评", qwen_tokenizer, 20, 6) == ("短评", False)


def test_render_uses_the_models_chat_template(qwen_tokenizer):
    turns = messages("房间很干净", "正面", committed("prompt", system="", instruction="情感："))
    assert turns[-1] == {"role": "assistant", "content": "正面"}
    prompt = render_prompt(turns[:-1], qwen_tokenizer)
    assert (
        prompt
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n情感：房间很干净<|im_end|>\n<|im_start|>assistant\n"
    )
    default = render_prompt(messages("x", None, committed("prompt", system=None)), qwen_tokenizer)
    assert default.startswith("<|im_start|>system\nYou are Qwen")  # the template's own default


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


@pytest.mark.parametrize(
    "answers", [LABELS, {"negative": "负面评价", "positive": "正面评价"}], ids=["one-token", "multi-token"]
)
def test_batched_scoring_matches_a_plain_full_evaluation(tiny_gguf, qwen_tokenizer, answers):
    """Shared-prefix, batched scoring gives the log-probabilities of a fresh one-at-a-time evaluation."""
    from llama_cpp import Llama

    from edgetune.runtimes.llamacpp.scorer import Scorer

    texts = ("质量很好，推荐", "太差了，退货", "一般般吧，还可以再便宜点", "物流快")
    prompts_text = [render_prompt(messages(t, None, committed("prompt")), qwen_tokenizer) for t in texts]
    full = Llama(model_path=str(tiny_gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    prompts = [full.tokenize(p.encode(), add_bos=False, special=True) for p in prompts_text]
    answer_tokens = {label: full.tokenize(w.encode(), add_bos=False, special=False) for label, w in answers.items()}

    scorer = Scorer(tiny_gguf, prompts, batch_size=3, max_new=4, threads=2, gpu_layers=-1)
    scores, texts_out = scorer.run(prompts, answer_tokens, True, answers, 4)
    assert 0 < scorer.prompt_evaluated < sum(map(len, prompts))  # the shared prefix was computed once
    scorer.close()

    for prompt, got, text in zip(prompts, scores, texts_out):
        for label, answer in answer_tokens.items():
            full.reset()
            full.eval(prompt + answer)
            expected = sum(log_softmax(full.scores[len(prompt) - 1 + i])[t] for i, t in enumerate(answer))
            assert got[label] == pytest.approx(expected, abs=2e-3)
        full.reset()  # greedy answer, one token at a time, no batching
        greedy = full.create_completion(prompt, max_tokens=4, temperature=0.0)["choices"][0]["text"]
        assert greedy.startswith(text)


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


def test_charts_are_pngs_that_the_same_figures_draw_the_same(tmp_path):
    import matplotlib.image

    from edgetune.report import charts

    variants = {
        "f16": {"accuracy": 0.826, "model_bytes": 1266e6, "bits_per_weight": 16.0},
        "q4_k_m": {"accuracy": 0.796, "model_bytes": 491e6, "bits_per_weight": 6.16, "kld_mean": 0.0662},
        "q4_k_m+lora": {"accuracy": 0.826, "model_bytes": 500e6, "bits_per_weight": 6.27, "kld_mean": 0.0012},
    }
    for name in ("a.png", "b.png"):
        assert charts.accuracy_vs_size(variants, "accuracy", ["q4_k_m", "q4_k_m+lora"], "q4_k_m+lora", tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # no date inside: DVC sees no change
    assert matplotlib.image.imread(tmp_path / "a.png").shape == (400, 640, 4)
    assert charts.kld_vs_bits(variants, tmp_path / "kld.png") and (tmp_path / "kld.png").stat().st_size > 0
    bench = {"threads": [1, 2], "variants": {"q4_k_m": {"completion": {"tg_tokens_per_second": 62.0}}}}
    assert charts.speed(bench, tmp_path / "speed.png")
    # nothing to draw: no file, and the report shows no picture for it
    assert (
        not charts.kld_vs_bits({"f16": variants["f16"]}, tmp_path / "none.png")
        and not (tmp_path / "none.png").exists()
    )
    assert not charts.speed({}, tmp_path / "none.png")


def test_the_loss_chart_places_each_row_at_the_epoch_dvclive_logged_with_it(tmp_path):
    from edgetune.report import charts

    metrics = tmp_path / "plots" / "metrics"
    (metrics / "eval").mkdir(parents=True)
    # dvclive's layout: a training row at steps 0, 1 and 3, an evaluation at step 2, the summary at 4
    (metrics / "epoch.tsv").write_text("step\tepoch\n0\t0.25\n1\t0.5\n2\t0.5\n3\t0.75\n4\t1.0\n")
    (metrics / "loss.tsv").write_text("step\tloss\n0\t0.9\n1\t0.6\n3\t0.4\n")
    (metrics / "eval" / "loss.tsv").write_text("step\tloss\n2\t0.55\n")
    assert charts.loss_curves(tmp_path) == {"training": {0.25: 0.9, 0.5: 0.6, 0.75: 0.4}, "validation": {0.5: 0.55}}
    assert charts.loss(tmp_path, tmp_path / "loss.png") and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not charts.loss(tmp_path / "no-run", tmp_path / "none.png") and not (tmp_path / "none.png").exists()


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


def test_the_environment_line_names_the_gpu_and_a_cuda_build():
    from edgetune.report.environment import describe, one_line

    env = describe()
    assert env["packages"]["torch"] and env["cpu_count"] >= 1 and env["cpu_features"]
    env |= {
        "commit": "abc1234",
        "code_changed": False,
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "count": 2, "cuda": "12.8"},
        "llama_cpp_tools": {"source": "llama-cpp-python 0.3.36", "cmake_flags": "-DGGML_CUDA=ON -DGGML_NATIVE=OFF"},
    }
    line = one_line(env)
    assert line.startswith("Made at commit abc1234 with torch ") and "2 × NVIDIA H100 80GB HBM3 (CUDA 12.8)" in line
    assert "llama.cpp tools built from llama-cpp-python 0.3.36's source with CUDA" in line
    assert "an unknown build" in one_line(env | {"llama_cpp_tools": None}) and "commit unknown" in one_line(
        env | {"commit": None}
    )
    assert one_line(env | {"code_changed": True}).startswith(
        "Made at commit abc1234 (with uncommitted changes to src/) with"
    )
