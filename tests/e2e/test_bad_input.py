"""Bad input: a clear message naming the input, a non-zero exit, and no partial output."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import GOOD, REPO, failed, make_tiny_model, prepare, report_files, run, set_params, write_jsonl


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("missing.jsonl", None, ["missing.jsonl", "file not found"]),
        ("empty.jsonl", "", ["empty.jsonl", "empty"]),
        (
            "bad.jsonl",
            '{"text": "好", "label": "positive"}\n{"text": "差", label\n',
            ["bad.jsonl", "line 2:", "not valid JSON"],
        ),
        (
            "gbk.csv",
            "text,label\n好,positive\n差,negative\n".encode("gbk"),
            ["gbk.csv", "line 2", "not UTF-8", "iconv"],
        ),
        (
            "nolabel.jsonl",
            [{"text": "好", "sentiment": "positive"}],
            ["nolabel.jsonl", "'label'", "data.label_column"],
        ),
        (
            "oneclass.jsonl",
            [{"text": f"好{i}", "label": "positive"} for i in range(10)],
            ["oneclass.jsonl", "only 1 class"],
        ),
        (
            "neutral.jsonl",
            GOOD + [{"text": "还行", "label": "neutral"}],
            ["neutral.jsonl", "'neutral'", "data.labels"],
        ),
    ],
)
def test_bad_data(workdir, tiny_model, name, content, needles):
    path = workdir / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        write_jsonl(path, content)
    assert failed(prepare(workdir, tiny_model, path), *needles)
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()


@pytest.mark.parametrize(
    "source, change, needles",
    [
        ("talk.yml", {}, ["talk.yml", "no `conversations` list"]),
        ("chatterbot:klingon", {}, ["chatterbot:klingon", "no such files", "chinese"]),
        ("good.jsonl", {"non_answers": ["(不知道"]}, ["data.non_answers", "`(不知道` is not a regular expression"]),
        ("*.none", {}, ["*.none", "matches no file", "no usable conversation"]),
    ],
)
def test_bad_dialogue_data(workdir, tiny_model, source, change, needles):
    (workdir / "talk.yml").write_text("categories: [chat]\nlines:\n- - 你好\n  - 你好呀\n", encoding="utf-8")
    write_jsonl(
        workdir / "good.jsonl",
        [{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀"}]}],
    )
    set_params(workdir, data={"task": "sft", "source": [source], **change})  # files relative to workdir, the cwd
    result = run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")
    assert failed(result, *needles)
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()


def test_good_data_prepares(workdir, tiny_model):
    result = prepare(workdir, tiny_model, write_jsonl(workdir / "good.jsonl", GOOD))
    assert result.exit_code == 0, result.output
    assert {p.name for p in (workdir / "out").iterdir()} == {"train.jsonl", "val.jsonl", "test.jsonl", ".edgetune"}


def test_params_with_a_wrong_type(workdir, tiny_model):
    set_params(workdir, data={"seed": "zero"})
    result = run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")
    assert failed(result, "params.yaml", "data.seed", "'zero'", "expected int")
    assert not (workdir / "out").exists()


def test_unknown_quant_type(workdir, tiny_gguf):
    result = run(
        "quantize", "--model", tiny_gguf, "--type", "q3_z", "--out", workdir / "x.gguf", "--stats", workdir / "x.json"
    )
    assert failed(result, "q3_z", "q4_k_m")
    assert not list(workdir.glob("*.gguf")) and not (workdir / "x.json").exists()


def test_a_gguf_that_was_not_pulled(workdir, tiny_gguf):
    """A GGUF named on the command line but missing (not pulled, or not built yet) is named, with
    the commands that fetch or build it, before any output is written."""
    missing = workdir / "tiny-q8_0.gguf"
    result = run("bench", "--model", missing, "--variant", "q8_0", "--out", workdir / "bench.json")
    assert failed(result, f"{missing}: GGUF file not found", f"dvc pull {missing}", "dvc repro")
    result = run(
        "quality",
        "--f16",
        tiny_gguf,
        "--model",
        tiny_gguf,
        "--lora",
        workdir / "tiny-lora.gguf",
        "--variant",
        "q8_0+lora",
        "--data",
        write_jsonl(workdir / "test.jsonl", GOOD),
        "--out",
        workdir / "quality.json",
    )
    assert failed(result, "tiny-lora.gguf: GGUF file not found", "dvc pull")
    assert not (workdir / "bench.json").exists() and not (workdir / "quality.json").exists()


def test_export_ships_only_the_file_the_report_measured(workdir, tiny_model, tiny_gguf):
    """metrics.json records the sha256 of every file evaluated: a GGUF replaced since is refused,
    and no bundle is written."""
    shutil.copy(tiny_gguf, workdir / "m-f16.gguf")
    args = [*report_files(workdir / "reports", workdir / "m-f16.gguf"), "--merged", tiny_model, "--out", "deploy"]
    with (workdir / "m-f16.gguf").open("ab") as f:
        f.write(b"\0" * 32)  # the same name, other bytes
    assert failed(run("export", *args), "m-f16.gguf: changed since the report measured it", "dvc repro")
    assert not (workdir / "deploy").exists()


def test_imatrix_variant_without_an_importance_matrix(workdir, tiny_gguf):
    result = run(
        "quantize",
        "--model",
        tiny_gguf,
        "--type",
        "q4_k_m-imatrix",
        "--imatrix",
        workdir / "none.gguf",
        "--out",
        workdir / "x.gguf",
        "--stats",
        workdir / "x.json",
    )
    assert failed(result, "q4_k_m-imatrix", "none.gguf", "dvc repro imatrix")
    assert not list(workdir.glob("*.gguf")) and not (workdir / "x.json").exists()


def test_type_that_needs_an_importance_matrix(workdir, qwen_tokenizer):
    from edgetune.gguf.llamacpp import convert_checkpoint

    # 256 wide, so IQ2_XXS's 256-blocks fit and llama-quantize insists on a matrix (64 wide falls back)
    convert_checkpoint(make_tiny_model(qwen_tokenizer, workdir / "wide", hidden=256), workdir / "wide.gguf")
    result = run(
        "quantize",
        "--model",
        workdir / "wide.gguf",
        "--type",
        "iq2_xxs",
        "--out",
        workdir / "x.gguf",
        "--stats",
        workdir / "x.json",
    )
    assert failed(result, "iq2_xxs needs an importance matrix", "iq2_xxs-imatrix", "requires an importance matrix")
    assert not (workdir / "x.gguf").exists() and not (workdir / "x.json").exists()


def test_imatrix_on_too_little_training_text(workdir, tiny_gguf):
    set_params(workdir, imatrix={"ctx": 512, "chunks": 4})
    data = write_jsonl(workdir / "train.jsonl", [{"messages": [{"role": "user", "content": "房间很干净"}]}])
    result = run("imatrix", "--model", tiny_gguf, "--data", data, "--out", workdir / "m.gguf")
    assert failed(result, "llama-imatrix", "failed", "tokens")  # llama.cpp's own words: how many tokens it needs
    assert not list(workdir.glob("*m.gguf*"))


def test_model_source_that_does_not_exist(workdir):
    set_params(workdir, model={"source": "./no/such/model"})
    assert failed(run("fetch-model", "--out", workdir / "base"), "./no/such/model", "no such folder")
    assert not (workdir / "base").exists()


def test_gguf_checksum_mismatch(workdir, tiny_gguf):
    set_params(workdir, model={"source": str(tiny_gguf), "sha256": "0" * 64})
    assert failed(run("fetch-model", "--out", workdir / "base"), "sha256", "does not match", "model.sha256")
    assert not (workdir / "base").exists()


def test_adapter_that_does_not_fit_the_base(workdir, tiny_model, qwen_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    narrow = make_tiny_model(qwen_tokenizer, workdir / "narrow", hidden=32)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(narrow),
        LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    adapter.save_pretrained(workdir / "adapter")
    result = run("merge", "--base", tiny_model, "--adapter", workdir / "adapter", "--out", workdir / "merged")
    assert failed(result, "adapter", "does not fit the base model")
    assert not (workdir / "merged").exists()


def test_training_checkpoints_that_skip_the_validation_steps(workdir, tiny_model, prepared):
    set_params(workdir, train={"save_steps": 3, "eval_steps": 2, "best_checkpoint": True})
    result = run(
        "train", "--model", tiny_model, "--data", prepared, "--out", workdir / "adapter", "--live", workdir / "live"
    )
    assert failed(result, "train.save_steps (3)", "train.eval_steps (2)", "train.best_checkpoint")
    assert not (workdir / "adapter").exists()


@pytest.mark.parametrize("stage", ["train", "evaluate", "baseline"])
def test_rows_made_for_another_task(workdir, tiny_model, tiny_gguf, prepared, stage):
    """Labelled rows read while data.task says conversations: named by file and row, before any
    output; no stage guesses the task from the rows."""
    set_params(workdir, data={"task": "sft"})
    out = workdir / "result"
    args = {
        "train": ["--model", tiny_model, "--data", prepared, "--out", out, "--live", workdir / "live"],
        "evaluate": ["--model", tiny_gguf, "--variant", "f16", "--data", prepared / "test.jsonl", "--out", out],
        "baseline": ["--data", prepared, "--out", out],
    }[stage]
    result = run(stage, *args)
    if stage == "baseline":  # nothing to classify in conversations: it says so and measures nothing
        assert result.exit_code == 0 and json.loads(out.read_text())["skipped"].startswith("data.task is sft")
        return
    split = "test" if stage == "evaluate" else "train"
    assert failed(
        result,
        f"{prepared / split}.jsonl: row 1 has no input_ids, assistant_mask",
        "it holds classify rows",
        "dvc repro",
    )
    assert not out.exists() and not (workdir / "live").exists()


def evaluate_f16(workdir, tiny_gguf, test: Path, val: Path):
    return run(
        "evaluate",
        "--model",
        tiny_gguf,
        "--variant",
        "f16",
        "--data",
        test,
        "--val",
        val,
        "--out",
        workdir / "f16.json",
    )


def test_calibration_without_a_validation_split(workdir, tiny_gguf, prepared):
    result = evaluate_f16(workdir, tiny_gguf, prepared / "test.jsonl", workdir / "none.jsonl")
    assert failed(result, "none.jsonl", "evaluate.calibrate")
    assert not (workdir / "f16.json").exists()


def test_labels_that_are_not_a_mapping(workdir, tiny_gguf, prepared):
    set_params(workdir, data={"labels": ["负面", "正面"]})
    result = evaluate_f16(workdir, tiny_gguf, prepared / "test.jsonl", prepared / "val.jsonl")
    assert failed(result, "params.yaml", "data.labels", "expected dict")
    assert not (workdir / "f16.json").exists()


@pytest.mark.parametrize(
    "section, key, value, allowed",
    [
        ("train", "epochs", -1, "> 0"),
        ("train", "batch_size", 0, ">= 1"),
        ("train", "eval_steps", 0, ">= 1"),
        ("train", "lr", -0.0001, "> 0"),
        ("train", "max_steps", 0, ">= 1, or -1"),
        ("lora", "r", 0, ">= 1"),
        ("lora", "dropout", 1.5, ">= 0 and < 1"),
        ("train", "precision", "fp61", "one of auto, bf16, fp32"),
    ],
)
def test_values_out_of_range(workdir, tiny_model, prepared, section, key, value, allowed):
    set_params(workdir, **{section: {key: value}})
    result = run(
        "train", "--model", tiny_model, "--data", prepared, "--out", workdir / "adapter", "--live", workdir / "live"
    )
    assert failed(result, f"`{section}.{key}` is {value!r}; allowed: {allowed}.")
    assert not (workdir / "adapter").exists() and not (workdir / "live").exists()


def test_data_values_out_of_range(workdir, tiny_model):
    set_params(workdir, data={"max_text_tokens": 0, "head_tokens": 0})
    assert failed(
        prepare(workdir, tiny_model, write_jsonl(workdir / "good.jsonl", GOOD)),
        "`data.max_text_tokens` is 0; allowed: >= 1.",
    )
    assert not (workdir / "out").exists()


def test_a_misspelt_section(workdir, tiny_model, prepared):
    params = (workdir / "params.yaml").read_text()
    (workdir / "params.yaml").write_text(params.replace("\ntrain:", "\ntrian:"))
    result = run(
        "train", "--model", tiny_model, "--data", prepared, "--out", workdir / "adapter", "--live", workdir / "live"
    )
    assert failed(result, "unknown section `trian`; did you mean `train`?")
    assert not (workdir / "adapter").exists()


@pytest.mark.parametrize(
    "section, value",
    [
        ("model", {"name": "x; touch pwned"}),
        ("model", {"dtype": "bfloat61"}),
        ("quantize", {"types": ["q8_0", "$(touch pwned)"]}),
    ],
)
def test_names_and_choices_are_checked_at_load(workdir, section, value):
    set_params(workdir, **{section: value})
    command = (
        ["fetch-model", "--out", "base"]
        if section == "model"
        else ["report", "--out", "reports"]  # reads quantize.types first
    )
    key, bad = next(iter(value.items()))
    bad = bad[-1] if isinstance(bad, list) else bad
    assert failed(run(*command), f"{section}.{key}", repr(bad), "allowed:")
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_dvc_commands_quote_every_interpolated_value():
    """A value DVC pastes into a command sits inside single quotes, where the shell reads nothing."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = [(s.get("do") or s)["cmd"] for s in stages.values()]
    words = [w for cmd in commands for w in cmd.split() if "${" in w]
    assert words and [w for w in words if not (w.startswith("'") and w.endswith("'"))] == []


def test_the_server_script_quotes_the_file_name(workdir, tiny_model, tiny_gguf):
    """The exported script starts llama-server on the bundle's own file whatever its name holds."""
    odd = workdir / "my models"
    odd.mkdir()
    shutil.copy(tiny_gguf, odd / "x $(touch pwned)-f16.gguf")
    result = run(
        "export",
        *report_files(workdir / "reports", odd / "x $(touch pwned)-f16.gguf"),
        "--merged",
        tiny_model,
        "--out",
        "deploy",
    )
    assert result.exit_code == 0, result.output
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "llama-server").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')  # prints the arguments it got
    (bin_dir / "llama-server").chmod(0o755)
    ran = subprocess.run(
        ["sh", "deploy/llama-server.sh"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    args = ran.stdout.splitlines()
    model = args[args.index("-m") + 1]
    assert model == "deploy/x $(touch pwned)-f16.gguf" and (workdir / model).is_file()
    assert not list(workdir.rglob("pwned"))


def test_the_model_card_names_no_folder_of_this_machine(workdir, tiny_model, tiny_gguf):
    set_params(workdir, data={"source": str(workdir / "reviews.csv")}, model={"source": str(tiny_gguf)})
    shutil.copy(tiny_gguf, workdir / "m-f16.gguf")
    result = run(
        "export", *report_files(workdir / "reports", workdir / "m-f16.gguf"), "--merged", tiny_model, "--out", "deploy"
    )
    assert result.exit_code == 0, result.output
    card = (workdir / "deploy" / "README.md").read_text()
    assert '"source": "reviews.csv"' in card and f'"source": "{tiny_gguf.name}"' in card
    assert not re.findall(r"(?<![\w.])/(?:tmp|root|home|work)\b", card)


@pytest.mark.parametrize("damage", ["truncated", "not a gguf"])
@pytest.mark.parametrize("stage", ["evaluate", "chat", "fetch-model"])
def test_a_damaged_gguf(workdir, tiny_gguf, prepared, damage, stage):
    bad = workdir / "bad.gguf"
    data = tiny_gguf.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>rate limited</html>" * 100)
    set_params(workdir, model={"source": str(bad), "sha256": None})
    commands = {
        "evaluate": [
            "evaluate",
            "--model",
            bad,
            "--variant",
            "f16",
            "--data",
            prepared / "test.jsonl",
            "--val",
            prepared / "val.jsonl",
            "--out",
            "f16.json",
        ],
        "chat": ["chat", bad],
        "fetch-model": ["fetch-model", "--out", "base"],
    }
    needle = "truncated" if damage == "truncated" else "not a GGUF file"
    assert failed(run(*commands[stage]), "bad.gguf", needle)
    assert not (workdir / "f16.json").exists() and not (workdir / "base").exists()


def test_a_read_only_output_folder(workdir, prepared):
    (workdir / "ro").mkdir()
    command = f"{sys.executable} -m edgetune.cli baseline --data {prepared} --out ro/tfidf.json"
    if os.geteuid() == 0:  # root writes into any folder a chmod protects: mount it read-only instead
        argv = ["unshare", "-m", "sh", "-c", f"mount --bind ro ro && mount -o remount,bind,ro ro && {command}"]
    else:
        (workdir / "ro").chmod(0o555)
        argv = ["sh", "-c", command]
    ran = subprocess.run(argv, capture_output=True, text=True, cwd=workdir)
    if "mount:" in ran.stderr or "unshare:" in ran.stderr:
        pytest.skip(f"no private mount namespace on this machine: {ran.stderr.strip()}")
    assert ran.returncode == 2, ran.stderr
    assert "Error: ro: Read-only file system" in ran.stderr or "Error: ro: Permission denied" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    assert not list((workdir / "ro").iterdir())
