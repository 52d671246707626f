"""Bad input: a clear message naming the input, a non-zero exit, and no partial output."""

import pytest

from conftest import GOOD, make_tiny_model, prepare, run, set_params, write_jsonl


def failed(result, *needles):
    assert result.exit_code != 0, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return True


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("missing.jsonl", None, ["missing.jsonl", "file not found"]),
        ("empty.jsonl", "", ["empty.jsonl", "empty"]),
        ("bad.jsonl", '{"text": "好", "label": "positive"}\n{"text": "差", label\n', ["bad.jsonl", "could not be read"]),
        ("nolabel.jsonl", [{"text": "好", "sentiment": "positive"}], ["nolabel.jsonl", "'label'", "data.label_column"]),
        ("oneclass.jsonl", [{"text": f"好{i}", "label": "positive"} for i in range(10)], ["oneclass.jsonl", "only 1 class"]),
        ("neutral.jsonl", GOOD + [{"text": "还行", "label": "neutral"}], ["neutral.jsonl", "'neutral'", "data.labels"]),
    ],
)
def test_bad_data(workdir, tiny_model, name, content, needles):
    path = workdir / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        write_jsonl(path, content)
    assert failed(prepare(workdir, tiny_model, path), *needles)
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()


def test_good_data_prepares(workdir, tiny_model):
    result = prepare(workdir, tiny_model, write_jsonl(workdir / "good.jsonl", GOOD))
    assert result.exit_code == 0, result.output
    assert {p.name for p in (workdir / "out").iterdir()} == {"train.jsonl", "val.jsonl", "test.jsonl"}


def test_params_with_a_wrong_type(workdir, tiny_model):
    set_params(workdir, data={"seed": "zero"})
    result = run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")
    assert failed(result, "params.yaml", "data.seed", "'zero'", "expected int")
    assert not (workdir / "out").exists()


def test_unknown_quant_type(workdir, tiny_gguf):
    result = run("quantize", "--model", tiny_gguf, "--type", "q3_z", "--out", workdir / "x.gguf", "--stats", workdir / "x.json")
    assert failed(result, "q3_z", "q4_k_m")
    assert not list(workdir.glob("*.gguf")) and not (workdir / "x.json").exists()


def test_a_quantized_gguf_that_was_not_pulled(workdir, tiny_gguf):
    """quality, bench and export read the quantized files without listing them in dvc.yaml: a
    missing one is named with the stage that makes it, to pull or rebuild."""
    set_params(workdir, quantize={"types": ["q8_0"]})
    result = run("bench", "--prefix", workdir / "tiny", "--out", workdir / "bench.json")
    assert failed(result, "tiny-f16.gguf", "tiny-q8_0.gguf", "dvc pull convert quantize@q8_0", "dvc repro")
    result = run("quality", "--f16", tiny_gguf, "--prefix", workdir / "tiny", "--data", write_jsonl(workdir / "test.jsonl", GOOD),
                 "--out", workdir / "quality.json")
    assert failed(result, "tiny-q8_0.gguf", "dvc pull quantize@q8_0")
    assert not (workdir / "bench.json").exists() and not (workdir / "quality.json").exists()


def test_imatrix_variant_without_an_importance_matrix(workdir, tiny_gguf):
    result = run("quantize", "--model", tiny_gguf, "--type", "q4_k_m-imatrix", "--imatrix", workdir / "none.gguf",
                 "--out", workdir / "x.gguf", "--stats", workdir / "x.json")
    assert failed(result, "q4_k_m-imatrix", "none.gguf", "dvc repro imatrix")
    assert not list(workdir.glob("*.gguf")) and not (workdir / "x.json").exists()


def test_type_that_needs_an_importance_matrix(workdir, qwen_tokenizer):
    from edgetune.convert import convert_to_gguf

    # 256 wide, so IQ2_XXS's 256-blocks fit and llama-quantize insists on a matrix (64 wide falls back)
    convert_to_gguf(make_tiny_model(qwen_tokenizer, workdir / "wide", hidden=256), workdir / "wide.gguf")
    result = run("quantize", "--model", workdir / "wide.gguf", "--type", "iq2_xxs", "--out", workdir / "x.gguf",
                 "--stats", workdir / "x.json")
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
        AutoModelForCausalLM.from_pretrained(narrow), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    adapter.save_pretrained(workdir / "adapter")
    result = run("merge", "--base", tiny_model, "--adapter", workdir / "adapter", "--out", workdir / "merged")
    assert failed(result, "adapter", "does not fit the base model")
    assert not (workdir / "merged").exists()


def test_training_checkpoints_that_skip_the_validation_steps(workdir, tiny_model, prepared):
    set_params(workdir, train={"save_steps": 3, "eval_steps": 2, "best_checkpoint": True})
    result = run("train", "--model", tiny_model, "--data", prepared, "--out", workdir / "adapter", "--live", workdir / "live")
    assert failed(result, "train.save_steps (3)", "train.eval_steps (2)", "train.best_checkpoint")
    assert not (workdir / "adapter").exists()


def test_calibration_without_a_validation_split(workdir, tiny_gguf, prepared):
    result = run("evaluate", "--model", tiny_gguf, "--variant", "f16", "--data", prepared / "test.jsonl",
                 "--val", workdir / "none.jsonl", "--out", workdir / "f16.json")
    assert failed(result, "none.jsonl", "evaluate.calibrate")
    assert not (workdir / "f16.json").exists()


def test_labels_that_are_not_a_mapping(workdir, tiny_gguf, prepared):
    set_params(workdir, data={"labels": ["负面", "正面"]})
    result = run("evaluate", "--model", tiny_gguf, "--variant", "f16", "--data", prepared / "test.jsonl",
                 "--val", prepared / "val.jsonl", "--out", workdir / "f16.json")
    assert failed(result, "params.yaml", "data.labels", "expected dict")
    assert not (workdir / "f16.json").exists()
