"""ExecuTorch: `edgetune export-executorch` on the tiny model (its q/k/v biases made large, so a
bias the exporter dropped would show) and a random adapter on one layer, run in ExecuTorch's own
runtime. With the adapter in the program the model gives PEFT's next-token distribution; without
it, the base's; and the stages measure it like a GGUF."""

import json
import shutil

import numpy as np
import pytest
from conftest import LABELS, REPO, bundle_is_what_the_report_measured, committed, labelled_rows, run, write_jsonl

from edgetune.core.labels import log_softmax
from edgetune.runtimes.executorch.variant import ExecuTorchVariant


def kld(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """The tiny model with biases of scale 1, a random PEFT adapter on its last layer only (the
    exporter pads the first with zeros), and the model exported at 8da4w with and without it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    workdir = tmp_path_factory.mktemp("executorch")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    model = shutil.copytree(tiny_model, workdir / "model")
    weights = load_file(model / "model.safetensors")
    torch.manual_seed(0)
    for name in weights:
        if name.endswith(".bias"):
            weights[name] = torch.randn(weights[name].shape)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[1], init_lora_weights=False, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora)
    peft_model.save_pretrained(workdir / "adapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        for out, adapter in (("8da4w", ["--adapter", workdir / "adapter"]), ("8da4w-base", [])):
            result = run("export-executorch", "--model", model, *adapter, "--type", "8da4w", "--out", workdir / out)
            assert result.exit_code == 0, result.output
    return workdir, peft_model.eval()


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
    import torch

    workdir, peft_model = exported
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    with torch.no_grad():
        peft = log_softmax(peft_model(torch.tensor([ids])).logits[0].numpy())
        with peft_model.disable_adapter():
            hf = log_softmax(peft_model(torch.tensor([ids])).logits[0].numpy())
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
    from edgetune.core.prompts import plain_text

    workdir, _ = exported
    model = ["--model", workdir / "8da4w" / "model.pte"]
    rows = labelled_rows(reviews[:12], qwen_tokenizer)
    data = write_jsonl(workdir / "test.jsonl", rows)
    name = "executorch-8da4w+lora"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run(
            "evaluate", *model, "--variant", name, "--data", data, "--val", data, "--out", workdir / "eval.json"
        )
        assert result.exit_code == 0, result.output
        result = run(
            "quality", "--f16", tiny_gguf, *model, "--variant", name, "--data", data, "--out", workdir / "quality.json"
        )
        assert result.exit_code == 0, result.output
        result = run("bench", *model, "--variant", name, "--out", workdir / "bench.json")
        assert result.exit_code == 0, result.output
        refused = run("evaluate", *model, "--lora", workdir / "adapter" / "adapter_config.json", "--variant", name,
                      "--data", data, "--val", data, "--out", workdir / "refused.json")  # fmt: skip
        assert refused.exit_code != 0 and "holds its adapter" in refused.output
    evaluated = json.loads((workdir / "eval.json").read_text())
    assert sum(map(sum, evaluated["confusion_matrix"]["matrix"])) == 12
    assert evaluated["runtime"] == "ExecuTorch (XNNPACK)"
    assert evaluated["adapter_bytes"] == (workdir / "8da4w" / "model.pte").stat().st_size
    quality = json.loads((workdir / "quality.json").read_text())
    q = committed("quality")
    chunks = min(q.chunks, len(qwen_tokenizer(plain_text(rows)).input_ids) // q.ctx)
    assert quality["computed_by"] == "python" and quality["scored_tokens"] == chunks * (q.ctx - q.ctx // 2 - 1)
    bench = json.loads((workdir / "bench.json").read_text())
    assert set(bench["peak_rss_bytes"]) == {str(c) for c in committed("bench").contexts}
    assert [s["threads"] for s in bench["speed"]] == bench["threads"]
    assert bench["completion"]["tg_tokens_per_second"] > 0
    bundle_is_what_the_report_measured(workdir, name, evaluated, quality, rows[0])
    readme = (workdir / "bundle" / "README.md").read_text()
    assert 'LlmModule("$dir/model.pte", "$dir/tokenizer.json", 0.0f, "$dir/foundation.ptd")' in readme
