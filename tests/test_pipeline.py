"""End to end: `dvc repro` in a copy of the repo, on a tiny Qwen2 and 60 real reviews.

Every stage runs for real: TRL training, PEFT merge, llama.cpp's converter and quantizer,
llama-cpp-python evaluation, DVC's dependency tracking.
"""

import hashlib
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, set_params, write_jsonl

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


def per_variant(stage: str, types: list[str]) -> set[str]:
    """The stages dvc.yaml makes of a foreach stage and its -lora twin for these quant types."""
    return {f"{stage}{s}@{t}" for t in types for s in ("", "-lora")}


def dvc(project: Path, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def ran_stages(output: str, every_time: bool = False) -> set[str]:
    """The stages a `dvc repro` ran; less `inputs`, which runs every time, unless `every_time`."""
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    return ran if every_time else ran - {"inputs"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model, reviews) -> Path:
    """A fresh git + DVC project with the repo's pipeline, pointed at the tiny model and reviews."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "reports/phone.json"):
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, root / name)  # reports/phone.json: the repo's own, of other files
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    data = write_jsonl(root / "reviews.jsonl", reviews)
    shutil.copytree(tiny_model, root / "model")  # the user's own model and data, in the project
    set_params(
        root,
        model={"source": "model", "name": "tiny", "dtype": "float32"},
        data={
            "source": str(data.relative_to(root)),
            "max_train": None,
            "max_val": 8,
            "max_test": 12,
            "split": [0.6, 0.2, 0.2],
            "max_text_tokens": 48,
            "head_tokens": 16,
        },
        train={
            "max_steps": 6,
            "batch_size": 4,
            "save_steps": 2,
            "eval_steps": 2,
            "logging_steps": 1,
            "lr": 1e-3,
            "best_checkpoint": True,
        },
        lora={"top_layers": 1},  # the tiny model has two layers; adapters in the last one
        evaluate={"max_answer_tokens": 4, "threads": 2},
        quality={"ctx": 64, "chunks": 4, "threads": 2},
        imatrix={"ctx": 64, "chunks": 4, "threads": 2},
        bench={"threads": [1], "prompt_tokens": 16, "gen_tokens": 4, "contexts": [128, 512], "repetitions": 1},
        export={"variant": "q4_k_m+lora"},  # the bundle of a base and its adapter, whichever the tiny run recommends
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    git = ["git", "-c", "user.name=edgetune", "-c", "user.email=edgetune@localhost"]
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def first_run(project) -> str:
    return dvc(project, "repro").stdout


@pytest.fixture
def changed(project, first_run, tmp_path) -> Path:
    """A copy of the finished tiny project for a test that changes it: each such test starts from the
    first run's results, whatever ran before it, and reruns only what its own change touches."""
    copy = tmp_path / "project"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    return copy


def read(project: Path, path: str) -> dict:
    return json.loads((project / path).read_text())


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


def test_the_exported_bundle_runs_in_llama_cpp_itself(project, first_run):
    from edgetune.core.files import sha256_file
    from edgetune.gguf import llamacpp

    deploy = project / "deploy"
    base, lora = deploy / "tiny-base-q4_k_m.gguf", deploy / "tiny-lora.gguf"  # export.variant: q4_k_m+lora
    assert base.read_bytes() == (project / "models" / "gguf" / base.name).read_bytes()
    sums = dict(reversed(line.split()) for line in (deploy / "SHA256SUMS").read_text().splitlines())
    assert sums == {base.name: sha256_file(base), lora.name: sha256_file(lora)}
    measured = read(project, "reports/metrics.json")["variants"]["q4_k_m+lora"]["files"]  # as evaluate recorded them
    assert [(Path(f["path"]).name, f["sha256"]) for f in measured] == [
        (base.name, sums[base.name]),
        (lora.name, sums[lora.name]),
    ]
    assert {p.name for p in deploy.iterdir()} == {
        base.name,
        lora.name,
        "SHA256SUMS",
        "chat_template.jinja",
        "generation.json",
        "Modelfile",
        "llama-server.sh",
        "README.md",
        ".edgetune",
    }
    modelfile = (deploy / "Modelfile").read_text()
    assert f"FROM ./{base.name}\nADAPTER ./{lora.name}\n" in modelfile
    assert f'--lora "$here"/{lora.name}' in (deploy / "llama-server.sh").read_text()
    assert json.loads((deploy / "generation.json").read_text())["stop"] == ["<|im_end|>"]
    card = (deploy / "README.md").read_text()
    assert "# tiny (q4_k_m+lora)" in card and "| q4_k_m+lora |" in card and '"lora"' in card
    run_it = (
        f'llama-completion -m {base.name} --lora {lora.name} --chat-template-file chat_template.jinja -cnv -p "你好"'
    )
    assert run_it in card
    assert "## Pictures" not in card and ".png" not in card  # the bundle carries no pictures to link to
    android = card.split("## On an Android phone")[1]  # the recipe: NDK build of the pinned source, adb, llama-cli
    assert "-DANDROID_ABI=arm64-v8a -DANDROID_PLATFORM=android-28" in android
    assert f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}" in android
    assert f"adb push path/to/build-android/bin/llama-cli {base.name} {lora.name} chat_template.jinja" in android
    assert f"./llama-cli -m {base.name} --lora {lora.name}" in android
    made = environment.one_line(json.loads((project / "reports" / "environment.json").read_text()))
    assert card.count(made) == 1 and card.rstrip().endswith(made)  # under "How it was made", once
    # the card's own line, in the bundle, for one turn: the bundled template wraps the prompt
    cmd = [
        str(llamacpp.tool("llama-completion")),
        *shlex.split(run_it)[1:],
        "-st",
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "2",
        "-c",
        "256",
    ]
    proc = subprocess.run(cmd, cwd=deploy, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "user\n你好\nassistant\n" in proc.stdout and "apply lora adapter" in proc.stderr


def arm_build() -> bool:
    from edgetune.gguf import llamacpp

    return bool(shutil.which("qemu-aarch64")) and all(
        (llamacpp.home() / "aarch64" / "cmake" / "bin" / tool).is_file()
        for tool in ("llama-perplexity", "llama-server")
    )


# The tiny model's next-token distributions are nearly flat (perplexity 153k of 152k tokens), so
# rounding moves them far less than the real model's (0.0011): aarch64 against x86 measured below
# llama-perplexity's last digit, 1e-6 (99th percentile 1e-6). The bound is set to catch a build
# that leaves out a part of the model: the bundle's base without its adapter is 4.7e-5 from it.
ARM_KLD_BOUND = 1e-5


@pytest.mark.skipif(not arm_build(), reason="no aarch64 build of llama.cpp or no qemu-aarch64: `make phone-setup`")
def test_the_bundle_answers_alike_on_an_arm64_build(changed):
    """make phone-check on the tiny bundle: the aarch64 build under qemu answers as x86 does."""
    import llama_cpp

    from edgetune.runtimes.llamacpp.scorer import Scorer

    set_params(changed, phone={"prompts": 6, "max_answer_tokens": 4, "ctx": 128, "chunks": 2})
    proc = subprocess.run(["edgetune", "phone-check"], cwd=changed, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    phone = read(changed, "reports/phone.json")
    deploy = changed / "deploy"
    sums = [line.split() for line in (deploy / "SHA256SUMS").read_text().splitlines()]
    assert [(f["name"], f["sha256"]) for f in phone["files"]] == [(name, digest) for digest, name in sums]
    kld, answers = phone["kld"], phone["answers"]
    assert kld["tokens_scored"] == 2 * (128 - 64 - 1) and kld["kld_mean"] < ARM_KLD_BOUND
    assert answers["prompts"] == 6 and answers["same_answer"] == 6  # the same greedy answers
    # the x86 margins again, by evaluate's own scorer on the prepared prompts
    rows = [json.loads(line) for line in (changed / "data/processed/test.jsonl").read_text().splitlines()][:6]
    base, lora = (deploy / name for _, name in sums)
    vocab = llama_cpp.Llama(model_path=str(base), vocab_only=True, verbose=False)
    prompts = [vocab.tokenize(r["prompt"].encode(), add_bos=False, special=True) for r in rows]
    words = yaml.safe_load((changed / "params.yaml").read_text())["data"]["labels"]
    first, second = words
    tokens = {k: vocab.tokenize(w.encode(), add_bos=False, special=False) for k, w in words.items()}
    scores, _ = Scorer(base, prompts, 1, 4, 2, 0, lora).run(prompts, tokens, False, words, 4)
    for row, s in zip(answers["rows"], scores, strict=True):  # decoded in other batches there: 0.001 apart
        assert row["margin_x86"] == pytest.approx(s[first] - s[second], abs=5e-3)
    # a label the builds disagree on sits closer to the boundary than the builds differ
    table = answers["rows"]
    flipped = [r for r in table if (r["margin_x86"] > 0) != (r["margin_aarch64"] > 0)]
    assert answers["same_label"] == 6 - len(flipped)
    widest = max(abs(r["margin_aarch64"] - r["margin_x86"]) for r in table)
    assert answers["max_margin_difference"] == widest
    assert all(abs(r["margin_x86"]) <= widest for r in flipped) and answers["disagreements_explained"]
    # the report shows it beside the variant it checked, and the card ships with it
    assert ran_stages(dvc(changed, "repro").stdout) == {"report", "export"}
    summary = (changed / "reports" / "summary.md").read_text()
    assert "**q4_k_m+lora on an arm64 CPU's arithmetic.**" in summary
    phone_section = summary.split("## On a phone")[1]
    row = next(line for line in phone_section.splitlines() if line.startswith("| q4_k_m+lora |"))
    assert row.endswith(f"| {kld['kld_mean']:.4f} |")


def test_the_bundle_can_ship_the_merged_file_for_runtimes_without_lora(changed):
    from edgetune.core.files import sha256_file

    set_params(changed, export={"merged": True})
    assert ran_stages(dvc(changed, "repro").stdout) == {"export"}
    deploy = changed / "deploy"
    merged = deploy / "tiny-q4_k_m.gguf"  # q4_k_m+lora, as the merged file of its type
    assert merged.read_bytes() == (changed / "models" / "gguf" / merged.name).read_bytes()
    assert (deploy / "SHA256SUMS").read_text() == f"{sha256_file(merged)}  {merged.name}\n"
    assert not list(deploy.glob("*lora*")) and "ADAPTER" not in (deploy / "Modelfile").read_text()
    assert "--lora" not in (deploy / "llama-server.sh").read_text()
    assert "# tiny (q4_k_m)" in (deploy / "README.md").read_text()


def test_second_repro_runs_nothing_but_the_check_of_its_inputs(project, first_run):
    out = dvc(project, "repro").stdout
    assert ran_stages(out, every_time=True) == {"inputs"}
    assert "Stage 'fetch-model' didn't change, skipping" in out and "Stage 'prepare' didn't change, skipping" in out


def fed_by(project: Path, stage: str) -> set[str]:
    """The stages dvc.lock records as depending on an output of `stage`: those a change to it reaches first."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = [o["path"] for o in lock[stage]["outs"]]
    return {
        name
        for name, s in lock.items()
        if any(d["path"] == o or d["path"].startswith(o + "/") for d in s.get("deps", []) for o in outs)
    }


def changed_stages(project: Path) -> set[str]:
    """The stages `dvc status` finds a changed dependency of, less `inputs`, which always has one."""
    return set(json.loads(dvc(project, "status", "--json").stdout)) - {"inputs"}


def test_a_value_that_would_break_out_of_a_command_stops_the_run_before_any_command(changed):
    """dvc.yaml puts quant types into shell commands: one holding a quote is refused by the inputs
    stage, which every other stage runs after, before DVC runs a command with it."""
    injected = "q8_0'; touch injected; echo '"
    set_params(changed, quantize={"types": ["q8_0", "q4_k_m", injected]})
    proc = dvc(changed, "repro", check=False)
    assert proc.returncode != 0 and ran_stages(proc.stdout, every_time=True) == {"inputs"}
    assert f"`quantize.types[2]` is {injected!r}; allowed: letters, digits" in proc.stderr + proc.stdout
    assert not (changed / "injected").exists()


def test_an_edited_data_file_reruns_what_it_feeds(changed):
    """The user's own data file is named in params.yaml, not dvc.yaml: an edit to it (labels fixed,
    rows added) must still rerun prepare, and its new rows must reach data/processed."""
    from edgetune.core.files import read_jsonl

    source = changed / "reviews.jsonl"
    rows = read_jsonl(source)
    opposite = {"positive": "negative", "negative": "positive"}
    fixed = [{**r, "label": opposite[r["label"]]} if i < 5 else r for i, r in enumerate(rows)]
    added = [{"text": f"第{i}次住这家酒店，房间干净，服务周到。", "label": "positive"} for i in range(5)]
    write_jsonl(source, fixed + added)

    out = dvc(changed, "repro", "prepare").stdout
    assert ran_stages(out, every_time=True) == {"inputs", "prepare"}
    assert read(changed, "reports/data.json")["cleaning"]["raw"] == len(rows) + 5
    edited = {(r["text"], r["label"]) for r in fixed + added}
    processed = [
        r for split in ("train", "val", "test") for r in read_jsonl(changed / f"data/processed/{split}.jsonl")
    ]
    assert {(r["text"], r["label"]) for r in processed} <= edited  # every label as fixed
    assert {r["text"] for r in processed} & {r["text"] for r in added}
    assert changed_stages(changed) == fed_by(changed, "prepare")


def test_an_edited_model_folder_reruns_what_it_feeds(changed):
    config = read(changed, "model/config.json")
    (changed / "model" / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))

    out = dvc(changed, "repro", "fetch-model").stdout
    assert ran_stages(out, every_time=True) == {"inputs", "fetch-model"}
    assert read(changed, "models/base/config.json")["rms_norm_eps"] == 1e-5
    assert changed_stages(changed) == fed_by(changed, "fetch-model") | {"report"}  # it quotes the pins
    pinned = read(changed, "reports/inputs/model.json")["files"]
    assert {f["path"] for f in pinned} == {f"model/{f.name}" for f in (changed / "model").iterdir()}


def test_another_machine_reuses_the_results_through_a_dvc_remote(changed, tmp_path):
    """What a shared remote and the GPU workflow rely on: results pushed once are pulled by a fresh
    clone, which then reproduces nothing, whether it pulls first or `dvc exp run --pull
    --allow-missing` fetches only what it needs."""
    dvc(changed, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    subprocess.run(["git", "add", "-A"], cwd=changed, check=True)
    subprocess.run(
        ["git", "-c", "user.name=edgetune", "-c", "user.email=edgetune@localhost", "commit", "-qm", "results"],
        cwd=changed,
        check=True,
    )
    assert "pushed" in dvc(changed, "push").stdout

    pulled, lazy = tmp_path / "pulled", tmp_path / "lazy"
    for clone in (pulled, lazy):
        subprocess.run(["git", "clone", "-q", str(changed), str(clone)], check=True)
    dvc(pulled, "pull")
    gguf = "models/gguf/tiny-q4_k_m.gguf"
    assert (pulled / gguf).read_bytes() == (changed / gguf).read_bytes()
    assert ran_stages(dvc(pulled, "repro").stdout) == set()

    assert ran_stages(dvc(lazy, "exp", "run", "--pull", "--allow-missing").stdout) == set()
    assert (lazy / "reports" / "metrics.json").read_bytes() == (changed / "reports" / "metrics.json").read_bytes()


def test_new_quant_variant_reruns_only_quantize_evaluate_report(changed):
    # an importance-matrix variant: llama-quantize must accept the imatrix stage's file
    set_params(changed, quantize={"types": ["q8_0", "q4_k_m", "q4_k_m-imatrix"]})
    out = dvc(changed, "repro").stdout
    assert ran_stages(out) - {"export"} == {
        "quantize@q4_k_m-imatrix",
        "evaluate@q4_k_m-imatrix",
        "quantize-base@q4_k_m-imatrix",
        "evaluate-lora@q4_k_m-imatrix",
        *per_variant("quality", ["q4_k_m-imatrix"]),  # the variants already measured are not measured again
        *per_variant("bench", ["q4_k_m-imatrix"]),
        "report",
    }
    stats = json.loads((changed / "reports" / "quantize" / "q4_k_m-imatrix.json").read_text())
    assert stats["imatrix"]["entries"] > 0 and stats["imatrix"]["chunks"] == 4
    from gguf import GGUFReader

    plain, matrixed = (
        GGUFReader(changed / "models" / "gguf" / f"tiny-{v}.gguf") for v in ("q4_k_m", "q4_k_m-imatrix")
    )
    assert "quantize.imatrix.entries_count" in matrixed.fields and "quantize.imatrix.entries_count" not in plain.fields
    assert any((a.data != b.data).any() for a, b in zip(plain.tensors, matrixed.tensors))  # other roundings
    matrix = GGUFReader(changed / "models" / "imatrix" / "tiny.gguf")
    assert matrix.fields["imatrix.datasets"].contents() == ["train.txt"]  # no temporary path: same input, same bytes
    metrics = json.loads((changed / "reports" / "metrics.json").read_text())["variants"]
    for name, plain in (
        ("q4_k_m-imatrix", "q4_k_m"),
        ("q4_k_m-imatrix+lora", "q4_k_m+lora"),
    ):  # against its plain twin
        v, vs = metrics[name], metrics[name]["vs_plain"]
        assert math.isfinite(v["kld_mean"]) and (vs["gained"] - vs["lost"]) / 12 == pytest.approx(
            v["accuracy"] - metrics[plain]["accuracy"]
        )
    summary = (changed / "reports" / "summary.md").read_text()
    matrix = summary.split("## Importance matrix")[1]
    assert "| q4_k_m | " in matrix and "| q4_k_m+lora | " in matrix


def test_new_test_split_reruns_the_evaluations_never_training(changed):
    before = (changed / "data" / "processed" / "train.jsonl").read_bytes()
    set_params(changed, data={"max_test": 8})
    out = dvc(changed, "repro").stdout
    types = yaml.safe_load((changed / "params.yaml").read_text())["quantize"]["types"]
    evaluations = {"evaluate-base", "evaluate-f16", *(f"evaluate{s}@{t}" for t in types for s in ("", "-lora"))}
    assert ran_stages(out) - {"export"} == {
        "prepare",
        "baseline",
        *evaluations,
        *per_variant("quality", types),
        "report",
    }
    assert (changed / "data" / "processed" / "train.jsonl").read_bytes() == before
    assert json.loads((changed / "reports" / "eval" / "f16.json").read_text())["n_samples"] == 8


def test_new_lora_params_retrain_and_rerun_the_lora_variants_but_not_the_base_quantization(changed):
    bases = {p: p.read_bytes() for p in (changed / "models" / "gguf").glob("tiny-base-*.gguf")}
    set_params(changed, lora={"r": 4})
    out = dvc(changed, "repro").stdout
    types = yaml.safe_load((changed / "params.yaml").read_text())["quantize"]["types"]
    downstream = {f"{stage}@{t}" for t in types for stage in ("quantize", "evaluate", "evaluate-lora")}
    assert ran_stages(out) - {"export"} == {
        "train",
        "merge",
        "convert",
        "convert-lora",
        "evaluate-f16",
        *downstream,
        *per_variant("quality", types),
        "bench-f16",
        *per_variant("bench", types),
        "report",
    }
    assert bases and all(p.read_bytes() == b for p, b in bases.items())  # quantized once, before training


def test_killed_training_resumes_from_its_checkpoint(changed):
    steps = 20  # killed at its first checkpoint (step 2), with 18 steps still to go
    set_params(changed, train={"max_steps": steps, "save_steps": 2, "eval_steps": 2})  # new params: a fresh run
    checkpoints = changed / "models" / "adapter" / "checkpoints"
    start = time.time()
    proc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=changed,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def fresh_checkpoint():  # the first run left checkpoints too: wait for one of this run
        states = checkpoints.glob("checkpoint-*/trainer_state.json")
        return any(s.stat().st_mtime > start for s in states if s.exists())

    while not fresh_checkpoint():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < start + 600
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (checkpoints / f"checkpoint-{steps}").exists()

    out = dvc(changed, "repro", "train").stdout
    assert "resuming from" in out, out
    state = json.loads((checkpoints / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert (changed / "models" / "adapter" / "adapter_model.safetensors").is_file()

    # Finished, it is trained again when forced, not resumed at its last step into a run of no steps.
    out = dvc(changed, "repro", "--force", "--single-item", "train").stdout
    assert "training from" in out, out
    summary = json.loads((changed / "reports" / "train" / "metrics.json").read_text())
    assert summary["steps"] == steps and summary["train_loss"] > 0 and summary["train"]["runtime"] > 0.5
