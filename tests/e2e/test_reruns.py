"""What a second `dvc repro` runs: nothing but the inputs check when nothing changed, and after a
change only the stages it reaches; a bad value stops the run before any command, and a killed
training resumes from its checkpoint. Each test that changes something gets its own copy of the
finished tiny project (`changed`)."""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import dvc, ran_stages, read, set_params, write_jsonl


def per_variant(stage: str, types: list[str]) -> set[str]:
    """The stages dvc.yaml makes of a foreach stage and its -lora twin for these quant types."""
    return {f"{stage}{s}@{t}" for t in types for s in ("", "-lora")}


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
