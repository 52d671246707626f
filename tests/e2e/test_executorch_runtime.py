"""ExecuTorch: `edgetune export-executorch` on the tiny model (its q/k/v biases made large, so a
bias the exporter dropped would show) and a random adapter on one layer, run in ExecuTorch's own
runtime. With the adapter in the program the model gives PEFT's next-token distribution; without
it, the base's; and the stages measure it like a GGUF."""

import json
import shutil

import numpy as np
import pytest
from conftest import (
    LABELS,
    REPO,
    biased_model_with_adapter,
    bundle_is_what_the_report_measured,
    committed,
    kld,
    labelled_rows,
    measured_like_a_gguf,
    peft_logprobs,
    run,
)

from edgetune.core.labels import log_softmax
from edgetune.runtimes.executorch.variant import ExecuTorchVariant


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny model with biases of scale 1, a random PEFT adapter on its last layer only (the
    exporter pads the first with zeros), and the model exported at 8da4w with and without it."""
    workdir = tmp_path_factory.mktemp("executorch")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    model, peft_model = biased_model_with_adapter(tiny_model, workdir)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        for out, adapter in (("8da4w", ["--adapter", workdir / "adapter"]), ("8da4w-base", [])):
            result = run("export-executorch", "--model", model, *adapter, "--type", "8da4w", "--out", workdir / out)
            assert result.exit_code == 0, result.output
    return workdir, peft_model


def et_logits(folder, ids) -> np.ndarray:
    return log_softmax(ExecuTorchVariant(folder / "model.pte").logits(len(ids), 2)(ids))


def test_the_folder_holds_the_program_its_weights_and_the_tokenizer(exported):
    workdir, peft_model = exported
    folder = workdir / "8da4w"
    assert {p.name for p in folder.iterdir()} == {
        "model.pte", "foundation.ptd", "export.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", ".edgetune",
    }  # fmt: skip
    info = json.loads((folder / "export.json").read_text())
    base = peft_model.get_base_model()
    n = sum(p.numel() for name, p in base.named_parameters(remove_duplicate=False) if "lora_" not in name)
    assert info["n_weights"] == n  # the tied output written out as its own tensor, as the exporter needs
    assert (info["type"], info["context"], info["n_layers"]) == ("8da4w", 2048, 2)
    # the adapter lives in the program: the same base's weights, a larger program
    assert (folder / "foundation.ptd").stat().st_size == (workdir / "8da4w-base" / "foundation.ptd").stat().st_size
    assert (folder / "model.pte").stat().st_size > (workdir / "8da4w-base" / "model.pte").stat().st_size


def test_with_the_adapter_in_the_program_it_gives_pefts_distribution(exported, qwen_tokenizer):
    """Measured on this model: 8da4w with the adapter 1.1e-4 from PEFT, without it 1.2e-4 from HF
    (the 4-bit base and 8-bit activations); the adapter moves the distribution by 1.8e-2, so the
    bound still catches an adapter left out, applied twice, scaled wrong or a bias dropped."""
    workdir, peft_model = exported
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    peft, hf = peft_logprobs(peft_model, ids)
    with_adapter, without = et_logits(workdir / "8da4w", ids), et_logits(workdir / "8da4w-base", ids)
    print(
        f"+lora {kld(peft, with_adapter).mean():.2e}, base {kld(hf, without).mean():.2e}, adapter {kld(peft, hf).mean():.2e}"
    )
    bound = 2e-3
    assert kld(peft, with_adapter).mean() < bound
    assert kld(hf, without).mean() < bound
    assert kld(peft, without).mean() > 5 * bound  # the program with the adapter is what changes the answer
    session = ExecuTorchVariant(workdir / "8da4w" / "model.pte").load(2)
    np.testing.assert_allclose(
        log_softmax(session.forward(ids, 0)), with_adapter[-1], atol=1e-4
    )  # prefill = token by token


@pytest.mark.parametrize(
    "answers", [LABELS, {"negative": "负面评价", "positive": "正面评价"}], ids=["one-token", "multi-token"]
)
def test_shared_prefix_scoring_matches_a_fresh_evaluation(exported, qwen_tokenizer, answers):
    """The scorer's prefix computed once, each prompt fed after it and each answer after the prompt,
    gives the log-probabilities of each prompt and answer run alone from position 0."""
    from edgetune.core.prompts import messages, render_prompt

    workdir, _ = exported
    variant = ExecuTorchVariant(workdir / "8da4w" / "model.pte")
    texts = ("质量很好，推荐", "太差了，退货", "一般般吧，还可以再便宜点")
    prompts = variant.tokenize(
        [render_prompt(messages(t, None, committed("prompt")), qwen_tokenizer) for t in texts], True
    )
    tokens = dict(zip(answers, variant.tokenize(list(answers.values()), False)))
    scorer = variant.label_scorer(prompts, 1, 4, 2, 0)
    scores, _ = scorer.run(prompts, tokens, False, answers, 4)
    session = variant.load(2)
    for prompt, got in zip(prompts, scores):
        for label, answer in tokens.items():
            expected = sum(
                log_softmax(session.forward(prompt + answer[:i], 0))[t] for i, t in enumerate(answer)
            )  # each answer token after a fresh prefill of everything before it
            assert got[label] == pytest.approx(float(expected), abs=1e-3)
    assert scorer.prompt_evaluated < sum(map(len, prompts)) + sum(len(a) - 1 for a in tokens.values()) * len(prompts)
    turns = messages(texts[0], None, committed("prompt"))
    assert scorer.renders(turns) == render_prompt(turns, qwen_tokenizer)


def test_the_stages_measure_an_executorch_variant_like_a_gguf(exported, tiny_gguf, reviews, qwen_tokenizer):
    """evaluate, quality and bench take the program as they take a GGUF; the bundle ships what they measured."""
    workdir, _ = exported
    model = ["--model", workdir / "8da4w" / "model.pte"]
    rows = labelled_rows(reviews[:12], qwen_tokenizer)
    name = "executorch-8da4w+lora"
    evaluated, quality = measured_like_a_gguf(workdir, name, model, tiny_gguf, rows, qwen_tokenizer)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("bench", *model, "--variant", name, "--out", workdir / "bench.json")
        assert result.exit_code == 0, result.output
        refused = run("evaluate", *model, "--lora", workdir / "adapter" / "adapter_config.json", "--variant", name,
                      "--data", workdir / "test.jsonl", "--val", workdir / "test.jsonl", "--out", workdir / "refused.json")  # fmt: skip
        assert refused.exit_code != 0 and "holds its adapter" in refused.output
    assert evaluated["runtime"] == "ExecuTorch (XNNPACK)"
    assert evaluated["adapter_bytes"] == (workdir / "8da4w" / "model.pte").stat().st_size
    bench = json.loads((workdir / "bench.json").read_text())
    assert set(bench["peak_rss_bytes"]) == {str(c) for c in committed("bench").contexts}
    assert [s["threads"] for s in bench["speed"]] == bench["threads"]
    assert bench["completion"]["tg_tokens_per_second"] > 0
    bundle_is_what_the_report_measured(workdir, name, evaluated, quality, rows[0])
    readme = (workdir / "bundle" / "README.md").read_text()
    assert 'LlmModule("$dir/model.pte", "$dir/tokenizer.json", 0.0f, "$dir/foundation.ptd")' in readme
