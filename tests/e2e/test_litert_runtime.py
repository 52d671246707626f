"""LiteRT: `edgetune export-litert` on the tiny model (its q/k/v biases made large, so a bias the
converter dropped would show; one all-zero 32-weight block, which XNNPACK's int4 refuses) with a
random adapter merged, converted by litert-torch in the LiteRT venv and run in ai-edge-litert's
interpreter. The .tflite gives the merged model's (PEFT's) next-token distribution, its padded
prefill signatures agree with its decode signature, and the stages measure it like a GGUF."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import (
    REPO,
    biased_model_with_adapter,
    bundle_is_what_the_report_measured,
    kld,
    labelled_rows,
    measured_like_a_gguf,
    peft_logprobs,
    run,
)

from edgetune.core.labels import log_softmax
from edgetune.runtimes.litert.variant import LiteRTVariant

PYTHON = REPO / ".venv-litert" / "bin" / "python"
pytestmark = pytest.mark.skipif(
    not PYTHON.is_file() and "EDGETUNE_LITERT_PYTHON" not in os.environ,
    reason="no LiteRT venv: `make runtimes` builds it (`make test` does)",
)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny model with biases of scale 1 and one zero block in layer 0's down_proj, a random
    PEFT adapter on layer 1 (so the block stays zero when merged), exported at int8 and int4."""
    workdir = tmp_path_factory.mktemp("litert")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")

    def zero_block(weights):
        weights["model.layers.0.mlp.down_proj.weight"][5, 32:64] = 0.0

    model, peft_model = biased_model_with_adapter(tiny_model, workdir, zero_block)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setenv("EDGETUNE_LITERT_PYTHON", os.environ.get("EDGETUNE_LITERT_PYTHON", str(PYTHON)))
        for kind in ("int8", "int4"):
            result = run("export-litert", "--model", model, "--adapter", workdir / "adapter", "--type", kind,
                         "--context", "256", "--out", workdir / kind)  # fmt: skip
            assert result.exit_code == 0, result.output
    return workdir, peft_model


def test_the_folder_holds_the_model_its_bundle_and_the_tokenizer(exported):
    workdir, peft_model = exported
    folder = workdir / "int4"
    assert {p.name for p in folder.iterdir()} == {
        "model.tflite", "model.litertlm", "export.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", ".edgetune",
    }  # fmt: skip
    info = json.loads((folder / "export.json").read_text())
    n = sum(p.numel() for name, p in peft_model.get_base_model().named_parameters() if "lora_" not in name)
    assert (info["n_weights"], info["n_layers"], info["context"]) == (n, 2, 256)
    assert info["prefill"] == [16, 32, 64, 128]  # the lengths shorter than the context
    embedding = peft_model.get_base_model().get_input_embeddings().weight  # the tied output: its padding row is zero
    assert info["zero_blocks_nudged"] == 1 + int(
        (embedding.view(-1, 2, 32) == 0).all(-1).sum()
    )  # and the block made above
    assert json.loads((workdir / "int8" / "export.json").read_text())["zero_blocks_nudged"] == 0
    # LiteRT-LM's bundle carries the very .tflite that is measured
    assert (folder / "model.tflite").read_bytes() in (folder / "model.litertlm").read_bytes()
    assert (folder / "model.tflite").stat().st_size < (workdir / "int8" / "model.tflite").stat().st_size


def test_it_gives_the_merged_models_distribution(exported, qwen_tokenizer):
    """Measured on this model: int8 2e-6 and int4 2e-4 from PEFT (the adapter merged), while the
    adapter moves the distribution by 2e-2: the bounds catch an adapter left out or a bias dropped."""
    workdir, peft_model = exported
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    peft, hf = peft_logprobs(peft_model, ids)
    int8, int4 = (log_softmax(LiteRTVariant(workdir / k / "model.tflite").logits(len(ids), 2)(ids)) for k in ("int8", "int4"))  # fmt: skip
    print(f"int8 {kld(peft, int8).mean():.2e}, int4 {kld(peft, int4).mean():.2e}, adapter {kld(peft, hf).mean():.2e}")
    assert kld(peft, int8).mean() < 1e-4
    assert kld(peft, int4).mean() < 2e-3
    assert kld(peft, hf).mean() > 5 * 2e-3  # what the merged adapter changes, far above both


def test_padded_prefill_agrees_with_decoding_token_by_token(exported, qwen_tokenizer):
    """A run padded to its signature's length, one split across signatures, and one fed through
    decode a token at a time give the same logits: padding never reaches a later token."""
    workdir, _ = exported
    variant = LiteRTVariant(workdir / "int8" / "model.tflite")
    ids = qwen_tokenizer("质量很好，推荐给大家。" * 20).input_ids[:70]  # 64 + 6: two signatures
    assert len(ids) == 70
    whole = variant.load(2).prefill(ids, 0)
    session = variant.load(2)
    stepwise = np.stack([session.forward([t], i) for i, t in enumerate(ids)])
    np.testing.assert_allclose(log_softmax(whole), log_softmax(stepwise), atol=2e-4)
    session.prefill(ids[:50], 0)  # a longer run at the same positions, then a shorter one over it
    np.testing.assert_allclose(session.forward(ids[40:45], 40), whole[44], atol=2e-4)
    with pytest.raises(Exception, match="longer than the model's context"):
        session.forward(ids, 200)


def test_the_stages_measure_a_litert_variant_like_a_gguf(exported, tiny_gguf, reviews, qwen_tokenizer):
    """evaluate, quality and bench take the .tflite as they take a GGUF; the bundle ships what they measured."""
    workdir, _ = exported
    model = ["--model", workdir / "int8" / "model.tflite"]
    rows = labelled_rows(reviews[:12], qwen_tokenizer)
    name = "litert-int8"
    evaluated, quality = measured_like_a_gguf(workdir, name, model, tiny_gguf, rows, qwen_tokenizer)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("bench", *model, "--variant", name, "--out", workdir / "bench.json")
        assert result.exit_code != 0 and "longer than the export's context (256)" in result.output
    assert evaluated["runtime"] == "LiteRT (XNNPACK)"
    folder = workdir / "int8"
    assert evaluated["model_bytes"] == sum(
        (folder / f).stat().st_size
        for f in ("model.tflite", "export.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    )  # fmt: skip  the .litertlm wraps the same model: shipped, not counted twice
    bundle_is_what_the_report_measured(workdir, name, evaluated, quality, rows[0])
    readme = (workdir / "bundle" / "README.md").read_text()
    assert 'EngineConfig(modelPath = "${context.filesDir}/litert-int8/model.litertlm"' in readme
    assert "the adapter merged" in readme
