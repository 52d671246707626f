"""End to end: `dvc repro` in a copy of the repo, on a tiny Qwen2 and 60 real reviews.

Every stage runs for real: TRL training, PEFT merge, llama.cpp's converter and quantizer,
llama-cpp-python evaluation, DVC's dependency tracking.
"""

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

from edgetune import environment

STAGES = {
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
    "quality",
    "bench",
    "report",
    "export",
}
VARIANTS = ("f16", "q8_0", "q4_k_m", "q8_0+lora", "q4_k_m+lora")


def dvc(project: Path, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model, reviews) -> Path:
    """A fresh git + DVC project with the repo's pipeline, pointed at the tiny model and reviews."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    data = write_jsonl(root / "reviews.jsonl", reviews)
    set_params(
        root,
        model={"source": str(tiny_model), "name": "tiny", "dtype": "float32"},
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


def test_repro_runs_every_stage_and_writes_real_outputs(project, first_run):
    assert ran_stages(first_run) == STAGES
    from llama_cpp import Llama

    for variant in ("f16", "q8_0", "q4_k_m"):
        gguf = project / "models" / "gguf" / f"tiny-{variant}.gguf"
        llm = Llama(model_path=str(gguf), n_ctx=64, verbose=False, logits_all=True, n_threads=2)
        llm.eval(llm.tokenize("房间很干净".encode()))
        assert llm.scores[llm.n_tokens - 1].std() > 0  # real logits

    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"tfidf", "base", *VARIANTS}
    for name, v in metrics["variants"].items():
        assert 0 <= v["accuracy"] <= 1 and 0 <= v["f1"] <= 1 and v["n_samples"] == 12, name
        assert set(v["per_class"]) == {"negative", "positive"}
    for name in ("base", *VARIANTS):
        result = json.loads((project / "reports" / "eval" / f"{name}.json").read_text())
        for key in (
            "accuracy",
            "precision",
            "recall",
            "f1",
            "confusion_matrix",
            "n_samples",
            "seconds_per_sample",
            "model_bytes",
        ):
            assert key in result, (name, key)
        assert sum(map(sum, result["confusion_matrix"]["matrix"])) == 12
        assert result["seconds_per_sample"] > 0 and result["model_bytes"] > 0
        assert set(result["label_offsets"]) == {"negative", "positive"} and result["label_offsets"]["negative"] == 0
        assert 0 <= result["uncalibrated"]["accuracy"] <= 1  # raw label scoring, beside the calibrated one
    for name in ("base", "q4_k_m", "q4_k_m+lora"):
        free = json.loads((project / "reports" / "eval" / f"{name}.json").read_text())["free_answer"]
        assert 0 <= free["accuracy"] <= 1 and 0 <= free["unparsed"] <= 12
    sizes = {v: metrics["variants"][v]["model_bytes"] for v in ("f16", "q8_0", "q4_k_m")}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]

    quant = json.loads((project / "reports" / "quantize" / "q4_k_m.json").read_text())
    assert sum(t["tensors"] for t in quant["tensor_types"].values()) > 0 and quant["bits_per_weight"] < 16
    # 64 columns: no 256-block k-quant fits, every such tensor falls back to a 32-block type
    assert quant["fallbacks"] and all(f["wanted"].startswith(("q4_K", "q6_K")) for f in quant["fallbacks"])
    summary = (project / "reports" / "summary.md").read_text()
    assert "| q4_k_m |" in summary and "| tfidf |" in summary
    f16 = metrics["variants"]["f16"]
    for name in VARIANTS[1:]:  # against f16 review by review: the net change is the accuracy difference
        v = metrics["variants"][name]
        assert (v["vs_f16"]["gained"] - v["vs_f16"]["lost"]) / 12 == pytest.approx(v["accuracy"] - f16["accuracy"])
        assert 0 < v["vs_f16"]["p_value"] <= 1 and v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1]
    assert "## Is the difference real?" in summary
    quality = json.loads((project / "reports" / "quality.json").read_text())["variants"]
    for name in VARIANTS[1:]:  # llama-perplexity's KL divergence from f16, on the test split
        assert all(math.isfinite(quality[name][k]) for k in ("kld_mean", "kld_p99", "ppl", "ppl_ratio"))
        assert 0 <= quality[name]["same_top_token"] <= 1
    assert quality["q8_0"]["kld_mean"] < quality["q4_k_m"]["kld_mean"]
    assert metrics["recommended"]["variant"] in VARIANTS and "## Recommended" in summary
    line = json.loads((project / "reports" / "plots" / "frontier.json").read_text())  # the accuracy-size frontier
    assert line and [p["model_mb"] for p in line] == sorted(p["model_mb"] for p in line)
    assert [p["variant"] for p in line] == metrics["recommended"]["frontier"] and "The frontier" in summary
    timed = json.loads((project / "reports" / "bench.json").read_text())
    bench = timed["variants"]
    assert set(bench) == set(VARIANTS)
    for (
        name,
        v,
    ) in bench.items():  # llama-bench and llama-completion speeds; llama-completion holds at least the weights
        speeds = [v["completion"], *v.get("speed", [])]
        assert all(s["pp_tokens_per_second"] > 0 and s["tg_tokens_per_second"] > 0 for s in speeds)
        assert ("speed" in v) == (not name.endswith("+lora"))  # llama-bench takes no adapter
        assert set(v["peak_rss_bytes"]) == {"128", "512"}
        assert min(v["peak_rss_bytes"].values()) > metrics["variants"][name]["model_bytes"]
    for name in ("q8_0+lora", "q4_k_m+lora"):  # the adapter's cost: against its base alone, timed the same way
        cost = timed["adapter_cost"][name]
        assert cost["tg_cost"] == pytest.approx(
            1 - bench[name]["completion"]["tg_tokens_per_second"] / cost["base"]["tg_tokens_per_second"]
        )
    assert "## On a device" in summary and "## The adapter at run time" in summary
    import matplotlib.image

    for name in ("accuracy_vs_size", "kld_vs_bits", "speed", "loss"):  # pictures that open without a network
        assert f"](plots/{name}.png)" in summary
        assert matplotlib.image.imread(project / "reports" / "plots" / f"{name}.png").shape[:2] == (400, 640)
    # the +lora variants ship the base quantized once (a file of that type) plus the adapter's bytes
    lora_bytes = (project / "models" / "gguf" / "tiny-lora.gguf").stat().st_size
    for t in ("q8_0", "q4_k_m"):
        base = project / "models" / "gguf" / f"tiny-base-{t}.gguf"
        assert metrics["variants"][f"{t}+lora"]["model_bytes"] == base.stat().st_size + lora_bytes
        stats = json.loads((project / "reports" / "quantize" / f"{t}+lora.json").read_text())
        assert (
            stats["source_type"] == "f16" and stats["copied"] is False and stats["model_bytes"] == base.stat().st_size
        )
    env = json.loads((project / "reports" / "environment.json").read_text())  # what made the figures
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    assert (
        env["commit"] == head
        and env["code_changed"] is False
        and env["packages"]["trl"] == importlib.metadata.version("trl")
    )
    assert env["llama_cpp_tools"]["source"] == f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
    assert summary.rstrip().endswith(environment.one_line(env)) and f"trl {env['packages']['trl']}" in summary
    assert (project / "reports" / "train" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert "training from models/gguf/tiny-base-q4_k_m.gguf" in first_run  # lora.train_on: the base that ships
    trained = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    assert 0 <= trained["eval_accuracy"] <= 1 and trained["chosen_step"] in (2, 4, 6)  # the best validated checkpoint
    assert (project / "reports" / "train" / "plots" / "metrics" / "eval" / "accuracy.tsv").is_file()
    merged_gen = json.loads((project / "models" / "merged" / "generation_config.json").read_text())
    assert merged_gen["eos_token_id"] == 151645  # <|im_end|>: answers stop at the end of the turn


def test_the_exported_bundle_runs_in_llama_cpp_itself(project, first_run):
    from edgetune import llamacpp
    from edgetune.files import sha256_file

    deploy = project / "deploy"
    base, lora = deploy / "tiny-base-q4_k_m.gguf", deploy / "tiny-lora.gguf"  # export.variant: q4_k_m+lora
    assert base.read_bytes() == (project / "models" / "gguf" / base.name).read_bytes()
    sums = dict(reversed(line.split()) for line in (deploy / "SHA256SUMS").read_text().splitlines())
    assert sums == {base.name: sha256_file(base), lora.name: sha256_file(lora)}
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


def test_the_bundle_can_ship_the_merged_file_for_runtimes_without_lora(project, first_run):
    from edgetune.files import sha256_file

    set_params(project, export={"merged": True})
    try:
        assert ran_stages(dvc(project, "repro").stdout) == {"export"}
        deploy = project / "deploy"
        merged = deploy / "tiny-q4_k_m.gguf"  # q4_k_m+lora, as the merged file of its type
        assert merged.read_bytes() == (project / "models" / "gguf" / merged.name).read_bytes()
        assert (deploy / "SHA256SUMS").read_text() == f"{sha256_file(merged)}  {merged.name}\n"
        assert not list(deploy.glob("*lora*")) and "ADAPTER" not in (deploy / "Modelfile").read_text()
        assert "--lora" not in (deploy / "llama-server.sh").read_text()
        assert "# tiny (q4_k_m)" in (deploy / "README.md").read_text()
    finally:
        set_params(project, export={"merged": False})
        dvc(project, "repro")


def test_second_repro_runs_nothing(project, first_run):
    out = dvc(project, "repro").stdout
    assert ran_stages(out) == set()
    assert "is up to date" in out or "Data and pipelines are up to date" in out


def test_another_machine_reuses_the_results_through_a_dvc_remote(project, first_run, tmp_path):
    """What a shared remote and the GPU workflow rely on: results pushed once are pulled by a fresh
    clone, which then reproduces nothing, whether it pulls first or `dvc exp run --pull
    --allow-missing` fetches only what it needs."""
    dvc(project, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        ["git", "-c", "user.name=edgetune", "-c", "user.email=edgetune@localhost", "commit", "-qm", "results"],
        cwd=project,
        check=True,
    )
    assert "pushed" in dvc(project, "push").stdout

    pulled, lazy = tmp_path / "pulled", tmp_path / "lazy"
    for clone in (pulled, lazy):
        subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    dvc(pulled, "pull")
    gguf = "models/gguf/tiny-q4_k_m.gguf"
    assert (pulled / gguf).read_bytes() == (project / gguf).read_bytes()
    assert ran_stages(dvc(pulled, "repro").stdout) == set()

    assert ran_stages(dvc(lazy, "exp", "run", "--pull", "--allow-missing").stdout) == set()
    assert (lazy / "reports" / "metrics.json").read_bytes() == (project / "reports" / "metrics.json").read_bytes()


def test_new_quant_variant_reruns_only_quantize_evaluate_report(project, first_run):
    # an importance-matrix variant: llama-quantize must accept the imatrix stage's file
    set_params(project, quantize={"types": ["q8_0", "q4_k_m", "q4_k_m-imatrix"]})
    out = dvc(project, "repro").stdout
    assert ran_stages(out) - {"export"} == {
        "quantize@q4_k_m-imatrix",
        "evaluate@q4_k_m-imatrix",
        "quantize-base@q4_k_m-imatrix",
        "evaluate-lora@q4_k_m-imatrix",
        "quality",
        "bench",
        "report",
    }
    stats = json.loads((project / "reports" / "quantize" / "q4_k_m-imatrix.json").read_text())
    assert stats["imatrix"]["entries"] > 0 and stats["imatrix"]["chunks"] == 4
    from gguf import GGUFReader

    plain, matrixed = (
        GGUFReader(project / "models" / "gguf" / f"tiny-{v}.gguf") for v in ("q4_k_m", "q4_k_m-imatrix")
    )
    assert "quantize.imatrix.entries_count" in matrixed.fields and "quantize.imatrix.entries_count" not in plain.fields
    assert any((a.data != b.data).any() for a, b in zip(plain.tensors, matrixed.tensors))  # other roundings
    matrix = GGUFReader(project / "models" / "imatrix" / "tiny.gguf")
    assert matrix.fields["imatrix.datasets"].contents() == ["train.txt"]  # no temporary path: same input, same bytes
    metrics = json.loads((project / "reports" / "metrics.json").read_text())["variants"]
    for name, plain in (
        ("q4_k_m-imatrix", "q4_k_m"),
        ("q4_k_m-imatrix+lora", "q4_k_m+lora"),
    ):  # against its plain twin
        v, vs = metrics[name], metrics[name]["vs_plain"]
        assert math.isfinite(v["kld_mean"]) and (vs["gained"] - vs["lost"]) / 12 == pytest.approx(
            v["accuracy"] - metrics[plain]["accuracy"]
        )
    summary = (project / "reports" / "summary.md").read_text()
    matrix = summary.split("## Importance matrix")[1]
    assert "| q4_k_m | " in matrix and "| q4_k_m+lora | " in matrix


def test_new_test_split_reruns_the_evaluations_never_training(project, first_run):
    before = (project / "data" / "processed" / "train.jsonl").read_bytes()
    set_params(project, data={"max_test": 8})
    out = dvc(project, "repro").stdout
    types = yaml.safe_load((project / "params.yaml").read_text())["quantize"]["types"]
    evaluations = {"evaluate-base", "evaluate-f16", *(f"evaluate{s}@{t}" for t in types for s in ("", "-lora"))}
    assert ran_stages(out) - {"export"} == {"prepare", "baseline", *evaluations, "quality", "report"}
    assert (project / "data" / "processed" / "train.jsonl").read_bytes() == before
    assert json.loads((project / "reports" / "eval" / "f16.json").read_text())["n_samples"] == 8


def test_new_lora_params_retrain_and_rerun_the_lora_variants_but_not_the_base_quantization(project, first_run):
    bases = {p: p.read_bytes() for p in (project / "models" / "gguf").glob("tiny-base-*.gguf")}
    set_params(project, lora={"r": 4})
    out = dvc(project, "repro").stdout
    types = yaml.safe_load((project / "params.yaml").read_text())["quantize"]["types"]
    downstream = {f"{stage}@{t}" for t in types for stage in ("quantize", "evaluate", "evaluate-lora")}
    assert ran_stages(out) - {"export"} == {
        "train",
        "merge",
        "convert",
        "convert-lora",
        "evaluate-f16",
        *downstream,
        "quality",
        "bench",
        "report",
    }
    assert bases and all(p.read_bytes() == b for p, b in bases.items())  # quantized once, before training


def test_killed_training_resumes_from_its_checkpoint(project, first_run):
    steps = 60  # long enough on the tiny model to be killed mid-way
    set_params(project, train={"max_steps": steps, "save_steps": 2, "eval_steps": 2})  # new params: a fresh run
    checkpoints = project / "models" / "adapter" / "checkpoints"
    start = time.time()
    proc = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=project,
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

    out = dvc(project, "repro", "train").stdout
    assert "resuming from" in out, out
    state = json.loads((checkpoints / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert (project / "models" / "adapter" / "adapter_model.safetensors").is_file()

    # Finished, it is trained again when forced, not resumed at its last step into a run of no steps.
    out = dvc(project, "repro", "--force", "--single-item", "train").stdout
    assert "training from" in out, out
    summary = json.loads((project / "reports" / "train" / "metrics.json").read_text())
    assert summary["steps"] == steps and summary["train_loss"] > 0 and summary["train"]["runtime"] > 0.5
