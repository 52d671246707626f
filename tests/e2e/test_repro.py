"""End to end: `dvc repro` in a copy of the repo, on a tiny Qwen2 and 60 real reviews.

Every stage runs for real: TRL training, PEFT merge, llama.cpp's converter and quantizer,
llama-cpp-python evaluation, DVC's dependency tracking. The run is made once (the `project` and
`first_run` session fixtures in tests/conftest.py); these tests read what it wrote.
"""

import hashlib
import importlib.metadata
import math
import os
import subprocess

import pytest
from conftest import ran_stages, read

from edgetune.report import environment

STAGES = {
    "inputs",
    "fetch-model",
    "prepare",
    "baseline",
    "imatrix",
    "quantize-base@q8_0",
    "quantize-base@q4_k_m",
    "train",
    "merge",
    "convert",
    "convert-lora",
    "quantize@q8_0",
    "quantize@q4_k_m",
    "evaluate-base",
    "evaluate-f16",
    "evaluate@q8_0",
    "evaluate@q4_k_m",
    "evaluate-lora@q8_0",
    "evaluate-lora@q4_k_m",
    "quality@q8_0",
    "quality@q4_k_m",
    "quality-lora@q8_0",
    "quality-lora@q4_k_m",
    "bench-f16",
    "bench@q8_0",
    "bench@q4_k_m",
    "bench-lora@q8_0",
    "bench-lora@q4_k_m",
    "report",
    "export",
}


VARIANTS = ("f16", "q8_0", "q4_k_m", "q8_0+lora", "q4_k_m+lora")


def f1_from_confusion(matrix: list[list[int]]) -> float:
    """Macro F1 recomputed from the confusion matrix (rows: true, columns: predicted)."""
    f1s = []
    for k in range(len(matrix)):
        tp = matrix[k][k]
        fp = sum(row[k] for row in matrix) - tp
        fn = sum(matrix[k]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


def test_repro_runs_every_stage_and_the_ggufs_give_real_logits(project, first_run):
    assert ran_stages(first_run, every_time=True) == STAGES
    from llama_cpp import Llama

    for variant in ("f16", "q8_0", "q4_k_m"):
        gguf = project / "models" / "gguf" / f"tiny-{variant}.gguf"
        llm = Llama(model_path=str(gguf), n_ctx=64, verbose=False, logits_all=True, n_threads=2)
        llm.eval(llm.tokenize("房间很干净".encode()))
        assert llm.scores[llm.n_tokens - 1].std() > 0
    assert "training from models/gguf/tiny-base-q4_k_m.gguf" in first_run  # lora.train_on: the base that ships
    merged_gen = read(project, "models/merged/generation_config.json")
    assert merged_gen["eos_token_id"] == 151645  # <|im_end|>: answers stop at the end of the turn


def test_every_variant_scores_the_whole_test_split_and_its_metrics_agree_with_its_predictions(project, first_run):
    from edgetune.core.files import read_predictions

    metrics = read(project, "reports/metrics.json")
    assert set(metrics["variants"]) == {"tfidf", "base", *VARIANTS}
    for name in ("base", *VARIANTS):
        result = read(project, f"reports/eval/{name}.json")
        matrix = result["confusion_matrix"]["matrix"]
        rows = read_predictions(project / "reports" / "eval" / f"{name}.csv")
        assert len(rows) == result["n_samples"] == 12 and sum(map(sum, matrix)) == 12
        assert result["accuracy"] == sum(a == p for a, p in rows) / 12 == sum(matrix[k][k] for k in range(2)) / 12
        assert result["f1"] == pytest.approx(f1_from_confusion(matrix))
        assert metrics["variants"][name]["accuracy"] == result["accuracy"]
        assert result["seconds_per_sample"] > 0 and result["model_bytes"] > 0
        assert set(result["label_offsets"]) == {"negative", "positive"} and result["label_offsets"]["negative"] == 0
        assert (result["uncalibrated"]["accuracy"] * 12).is_integer()  # raw label scoring, of the same 12 reviews
    for name in ("base", "q4_k_m", "q4_k_m+lora"):  # a free answer that names no label is wrong, and counted
        free = read(project, f"reports/eval/{name}.json")["free_answer"]
        matrix = free["confusion_matrix"]["matrix"]
        assert sum(map(sum, matrix)) == 12 - free["unparsed"]
        assert free["accuracy"] == sum(matrix[k][k] for k in range(2)) / 12
    sizes = {v: metrics["variants"][v]["model_bytes"] for v in ("f16", "q8_0", "q4_k_m")}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_each_difference_to_f16_is_the_net_of_the_reviews_lost_and_gained(project, first_run):
    from edgetune.core.files import read_predictions

    metrics = read(project, "reports/metrics.json")
    f16 = metrics["variants"]["f16"]
    reference = read_predictions(project / "reports" / "eval" / "f16.csv")
    for name in VARIANTS[1:]:
        v = metrics["variants"][name]
        pairs = list(zip(reference, read_predictions(project / "reports" / "eval" / f"{name}.csv")))
        lost = sum(r == a != q for (a, r), (_, q) in pairs)
        gained = sum(q == a != r for (a, r), (_, q) in pairs)
        n = lost + gained  # McNemar's exact test by hand: two-sided, the discordant reviews at one half
        p_value = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(lost, gained) + 1)) / 2**n) if n else 1.0
        assert (v["vs_f16"]["lost"], v["vs_f16"]["gained"]) == (lost, gained)
        assert v["vs_f16"]["p_value"] == pytest.approx(p_value)
        assert (gained - lost) / 12 == pytest.approx(v["accuracy"] - f16["accuracy"])
        z, acc = 1.959963984540054, v["accuracy"]  # Wilson's 95% interval, by hand
        centre, half = acc + z * z / 24, z * math.sqrt(acc * (1 - acc) / 12 + z * z / 576)
        assert v["accuracy_ci95"] == pytest.approx(
            [(centre - half) / (1 + z * z / 12), (centre + half) / (1 + z * z / 12)]
        )
    assert "## Is the difference real?" in (project / "reports" / "summary.md").read_text()


def test_the_quantizer_reports_what_each_file_holds(project, first_run):
    quant = read(project, "reports/quantize/q4_k_m.json")
    assert sum(t["tensors"] for t in quant["tensor_types"].values()) > 0 and quant["bits_per_weight"] < 16
    # 64 columns: no 256-block k-quant fits, every such tensor falls back to a 32-block type
    assert quant["fallbacks"] and all(f["wanted"].startswith(("q4_K", "q6_K")) for f in quant["fallbacks"])
    # the +lora variants ship the base quantized once (a file of that type) plus the adapter's bytes
    metrics = read(project, "reports/metrics.json")
    lora_bytes = (project / "models" / "gguf" / "tiny-lora.gguf").stat().st_size
    for t in ("q8_0", "q4_k_m"):
        base = project / "models" / "gguf" / f"tiny-base-{t}.gguf"
        assert metrics["variants"][f"{t}+lora"]["model_bytes"] == base.stat().st_size + lora_bytes
        stats = read(project, f"reports/quantize/{t}+lora.json")
        assert stats["source_type"] == "f16" and stats["copied"] is False
        assert stats["model_bytes"] == base.stat().st_size


def test_quality_measures_each_variant_against_f16(project, first_run):
    metrics = read(project, "reports/metrics.json")["variants"]
    for name in VARIANTS[1:]:  # llama-perplexity's KL divergence from f16, on the test split, one stage each
        q = read(project, f"reports/quality/{name}.json")
        assert q["variant"] == name and q["reference"] == "f16" and (q["ctx"], q["chunks"]) == (64, 4)
        assert all(math.isfinite(q[k]) for k in ("kld_mean", "kld_p99", "ppl", "ppl_ratio"))
        assert q["ppl_ratio"] == pytest.approx(q["ppl"] / q["ppl_f16"], rel=1e-3)
        assert {k: metrics[name][k] for k in ("kld_mean", "ppl_ratio")} == {k: q[k] for k in ("kld_mean", "ppl_ratio")}
    first = read(project, "reports/quality/q8_0.json")
    assert all(read(project, f"reports/quality/{n}.json")["ppl_f16"] == first["ppl_f16"] for n in VARIANTS[1:])
    assert first["kld_mean"] < read(project, "reports/quality/q4_k_m.json")["kld_mean"]


def test_the_recommendation_sits_on_the_accuracy_size_frontier(project, first_run):
    metrics = read(project, "reports/metrics.json")
    summary = (project / "reports" / "summary.md").read_text()
    assert metrics["recommended"]["variant"] in VARIANTS and "## Recommended" in summary
    line = read(project, "reports/plots/frontier.json")
    assert line and [p["model_mb"] for p in line] == sorted(p["model_mb"] for p in line)
    assert [p["variant"] for p in line] == metrics["recommended"]["frontier"] and "The frontier" in summary


def test_bench_times_every_variant_and_the_adapters_cost(project, first_run):
    metrics = read(project, "reports/metrics.json")
    bench = {name: read(project, f"reports/bench/{name}.json") for name in VARIANTS}  # one stage each
    for name, v in bench.items():  # llama-completion holds at least the weights in memory
        assert v["variant"] == name and v["threads"] == sorted({1, os.cpu_count()})
        speeds = [v["completion"], *v.get("speed", [])]
        assert all(s["pp_tokens_per_second"] > 0 and s["tg_tokens_per_second"] > 0 for s in speeds)
        assert ("speed" in v) == (not name.endswith("+lora"))  # llama-bench takes no adapter
        assert set(v["peak_rss_bytes"]) == {"128", "512"}
        assert min(v["peak_rss_bytes"].values()) > metrics["variants"][name]["model_bytes"]
    for name in ("q8_0+lora", "q4_k_m+lora"):  # the adapter's cost: against its base alone, timed the same way
        cost = bench[name]["adapter_cost"]
        base_tg = cost["base"]["tg_tokens_per_second"]
        assert cost["tg_cost"] == pytest.approx(1 - bench[name]["completion"]["tg_tokens_per_second"] / base_tg)
    summary = (project / "reports" / "summary.md").read_text()
    assert "## On a device" in summary and "## The adapter at run time" in summary
    # what decoding a token reads: every tensor of the tied tiny model (llama-quantize's own count),
    # and 2 layers x 2 KV heads x (16 + 16) f16 values per token of context
    for name in ("q8_0", "q4_k_m", "q8_0+lora", "q4_k_m+lora"):
        read_per_token = bench[name]["bytes_read_per_token"]
        quantized = read(project, f"reports/quantize/{name}.json")["tensor_types"].values()
        assert read_per_token["weights"] == sum(t["bytes"] for t in quantized)
        assert read_per_token["kv_cache_per_context_token"] == 2 * 2 * 2 * (16 + 16)
        assert (read_per_token["adapter"] > 0) == name.endswith("+lora")
    mb = (bench["q8_0"]["bytes_read_per_token"]["weights"]) / 1e6
    assert f"| q8_0 | {mb:.0f} | {17 / mb * 1e3:.0f} / {51 / mb * 1e3:.0f} / {77 / mb * 1e3:.0f} |" in summary
    assert "## On a phone" in summary and "reports/phone.json checked other files" in summary  # the repo's own


def test_the_summary_shows_its_pictures_and_says_what_made_it(project, first_run):
    import matplotlib.image

    summary = (project / "reports" / "summary.md").read_text()
    assert "| q4_k_m |" in summary and "| tfidf |" in summary
    for name in ("accuracy_vs_size", "kld_vs_bits", "speed", "loss"):  # pictures that open without a network
        assert f"](plots/{name}.png)" in summary
        assert matplotlib.image.imread(project / "reports" / "plots" / f"{name}.png").shape[:2] == (400, 640)
    env = read(project, "reports/environment.json")
    git = ["git", "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, cwd=project, capture_output=True, text=True).stdout.strip()
    assert env["commit"] == head and env["code_changed"] is False
    assert env["packages"]["trl"] == importlib.metadata.version("trl")
    assert env["llama_cpp_tools"]["source"] == f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    assert summary.rstrip().endswith(environment.one_line(env)) and f"trl {env['packages']['trl']}" in summary
    digest = hashlib.sha256((project / "reviews.jsonl").read_bytes()).hexdigest()[:12]  # pinned by the inputs stage
    assert f"- data `reviews.jsonl`: 1 file(s), sha256 {digest}\n" in summary.split("## Made from")[1]


def test_training_keeps_the_best_validated_checkpoint(project, first_run):
    from edgetune.report.charts import loss_curves

    trained = read(project, "reports/train/metrics.json")
    live = project / "reports" / "train"
    logged = loss_curves(live)
    assert len(logged["training"]) == 6 and len(logged["validation"]) == 3  # every step, and every 2nd validated
    accuracy = (live / "plots" / "metrics" / "eval" / "accuracy.tsv").read_text().split()[3::2]
    assert trained["eval_accuracy"] == max(map(float, accuracy)) and trained["chosen_step"] in (2, 4, 6)
    assert (trained["eval_accuracy"] * 8).is_integer()  # of the 8 validation reviews
