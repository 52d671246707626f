"""ONNX Runtime GenAI: `edgetune export-onnx` on the tiny model and a random adapter, run in
onnxruntime-genai itself. The base and the adapter are separate files; with the adapter applied
at run time the model gives PEFT's next-token distribution, and the stages measure it like a GGUF."""

import json
import shutil

import numpy as np
import pytest
from conftest import (
    LABELS,
    REPO,
    bundle_is_what_the_report_measured,
    committed,
    kld,
    labelled_rows,
    measured_like_a_gguf,
    peft_logprobs,
    run,
)

from edgetune.core.labels import log_softmax


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """A random nonzero PEFT adapter on the tiny model, and the model exported at fp32 and int4 with
    it; and at int4 without it (export-onnx-base, what lora.train_on onnx-int4 trains on)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    workdir = tmp_path_factory.mktemp("onnx")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    peft_model.save_pretrained(workdir / "adapter")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        for kind in ("fp32", "int4"):
            result = run(
                "export-onnx", "--model", tiny_model, "--adapter", workdir / "adapter", "--type", kind,
                "--out", workdir / kind,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "adapter of 28 tensors" in result.output  # 2 layers x 7 projections x (A, B)
        result = run("export-onnx", "--model", tiny_model, "--type", "int4", "--out", workdir / "int4-base")
        assert result.exit_code == 0, result.output
    return workdir, peft_model.eval()


def onnx_logits(folder, ids, adapter: bool) -> np.ndarray:
    from edgetune.runtimes.onnx.variant import OnnxVariant

    variant = OnnxVariant(folder / "model.onnx", folder / "adapter.onnx_adapter" if adapter else None)
    return log_softmax(variant.logits(len(ids), 2)(ids))


def test_the_folder_holds_the_base_and_the_adapter_as_pefts_weights(exported):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    workdir, _ = exported
    folder = workdir / "int4"
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx", "model.onnx.data", "adapter.onnx_adapter", "genai_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", ".edgetune",
    }  # fmt: skip
    params = {
        k: v.numpy()
        for k, v in ort.AdapterFormat.read_adapter(str(folder / "adapter.onnx_adapter")).get_parameters().items()
    }
    peft = load_file(workdir / "adapter" / "adapter_model.safetensors")
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_{}.weight"
    np.testing.assert_array_equal(
        params["model.layers.1.mlp.down_proj.lora_A.MatMul.weight"], peft[name.format("A")].T
    )
    np.testing.assert_allclose(  # alpha / r = 2, folded into B
        params["model.layers.1.mlp.down_proj.lora_B.MatMul.weight"], 2 * peft[name.format("B")].T, rtol=1e-6
    )
    graph = onnx.load(folder / "model.onnx").graph
    slots = {i.name for i in graph.input} & set(params)
    assert slots == set(params)  # every adapter tensor is an input of the graph ...
    defaults = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name in slots}
    assert set(defaults) == slots and not any(d.any() for d in defaults.values())  # ... whose default is zero
    ops = [n.op_type for n in graph.node if "/lora_" in n.name]
    assert ops == ["MatMul"] * 28  # the adapter stays out of the 4-bit rounding


@pytest.mark.parametrize("kind, bound", [("fp32", 1e-9), ("int4", 2e-3)])
def test_with_the_adapter_applied_it_gives_pefts_distribution(exported, qwen_tokenizer, kind, bound):
    """Measured on this model: fp32 2e-15 with the adapter, 3e-16 without (the same arithmetic in
    another order); int4 1.5e-4 with it, 2.9e-4 without (the 4-bit base). The adapter moves the
    distribution by 2.3e-2, so either bound still catches an adapter not applied, applied twice or
    scaled wrong."""
    workdir, peft_model = exported
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    peft, hf = peft_logprobs(peft_model, ids)
    with_adapter, without = onnx_logits(workdir / kind, ids, True), onnx_logits(workdir / kind, ids, False)
    print(
        f"{kind}: +lora {kld(peft, with_adapter).mean():.2e}, base {kld(hf, without).mean():.2e}, adapter {kld(peft, hf).mean():.2e}"
    )
    assert kld(peft, with_adapter).mean() < bound
    assert kld(hf, without).mean() < bound
    assert kld(peft, without).mean() > 10 * bound  # the adapter file, swapped in, is what changes the answer


@pytest.mark.parametrize(
    "answers", [LABELS, {"negative": "负面评价", "positive": "正面评价"}], ids=["one-token", "multi-token"]
)
def test_shared_prefix_scoring_matches_a_fresh_evaluation(exported, qwen_tokenizer, answers):
    """The scorer's prefix computed once and each prompt rewound away gives the log-probabilities of
    each prompt and answer run alone on a fresh context."""
    from edgetune.core.prompts import messages, render_prompt
    from edgetune.runtimes.onnx.variant import OnnxVariant

    workdir, _ = exported
    variant = OnnxVariant(workdir / "int4" / "model.onnx", workdir / "int4" / "adapter.onnx_adapter")
    texts = ("质量很好，推荐", "太差了，退货", "一般般吧，还可以再便宜点")
    prompts = variant.tokenize(
        [render_prompt(messages(t, None, committed("prompt")), qwen_tokenizer) for t in texts], True
    )
    assert prompts == [
        qwen_tokenizer(render_prompt(messages(t, None, committed("prompt")), qwen_tokenizer)).input_ids for t in texts
    ]
    tokens = dict(zip(answers, variant.tokenize(list(answers.values()), False)))
    scorer = variant.label_scorer(prompts, 1, 4, 2, 0)
    scores, _ = scorer.run(prompts, tokens, False, answers, 4)
    fresh = variant.logits(64, 2)
    for prompt, got in zip(prompts, scores):
        for label, answer in tokens.items():
            rows = log_softmax(fresh(prompt + answer[:-1]))[len(prompt) - 1 :]
            assert got[label] == pytest.approx(sum(row[t] for row, t in zip(rows, answer)), abs=1e-4)
    assert scorer.prompt_evaluated < sum(map(len, prompts))  # the prefix once
    turns = messages(texts[0], None, committed("prompt"))
    assert scorer.renders(turns) == render_prompt(turns, qwen_tokenizer)  # og renders the folder's template as HF does


def test_the_stages_measure_an_onnx_variant_like_a_gguf(exported, tiny_gguf, reviews, qwen_tokenizer):
    """evaluate, quality and bench take the ONNX folder's model and adapter as they take a GGUF and its LoRA."""
    workdir, _ = exported
    folder = workdir / "int4"
    files = ["--model", folder / "model.onnx", "--lora", folder / "adapter.onnx_adapter"]
    rows = labelled_rows(reviews[:12], qwen_tokenizer)
    evaluated, quality = measured_like_a_gguf(workdir, "onnx-int4+lora", files, tiny_gguf, rows, qwen_tokenizer)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("bench", *files, "--variant", "onnx-int4+lora", "--out", workdir / "bench.json")
        assert result.exit_code == 0, result.output
    assert evaluated["adapter_bytes"] == (folder / "adapter.onnx_adapter").stat().st_size
    assert [f["path"] for f in evaluated["files"]][-1] == str(folder / "adapter.onnx_adapter")
    bench = json.loads((workdir / "bench.json").read_text())
    assert set(bench["peak_rss_bytes"]) == {str(c) for c in committed("bench").contexts}
    assert (
        bench["completion"]["tg_tokens_per_second"] > 0 and 0 < bench["adapter_cost"]["base"]["pp_tokens_per_second"]
    )
    bundle_is_what_the_report_measured(workdir, "onnx-int4+lora", evaluated, quality, rows[0])
    assert "adapter.onnx_adapter" in (workdir / "bundle" / "SHA256SUMS").read_text()


def test_train_on_an_onnx_type_starts_from_the_weights_onnx_runs(
    exported, tiny_model, qwen_tokenizer, workdir, prepared
):
    """lora.train_on onnx-int4: the weights dequantized from the int4 model.onnx give onnxruntime's
    own distribution, far closer than the checkpoint's; the base built alone holds the same rounded
    weights as the one built for the adapter; and train starts from them."""
    import torch
    from conftest import set_params
    from transformers import AutoModelForCausalLM

    from edgetune.runtimes.onnx.dequantize import dequantized, rounded_weights

    folder, _ = exported
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    checkpoint = dict(plain.named_parameters(remove_duplicate=False))
    shapes = {name: tuple(p.shape) for name, p in checkpoint.items()}
    alone = rounded_weights(folder / "int4-base" / "model.onnx", shapes)  # q, k and v fused: split back
    built_for_adapter = rounded_weights(folder / "int4" / "model.onnx", shapes)
    assert len(alone) == 7 * plain.config.num_hidden_layers + 2  # the projections, the embedding and the output
    assert alone.keys() == built_for_adapter.keys()
    assert all(np.array_equal(alone[k], built_for_adapter[k]) for k in alone)
    model = dequantized(folder / "int4-base" / "model.onnx", tiny_model).eval()
    for name, param in model.named_parameters(remove_duplicate=False):
        rounded = torch.from_numpy(alone[name]) if name in alone else checkpoint[name].data
        assert torch.equal(param.data, rounded)  # norms and biases: the checkpoint's own
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    runtime = onnx_logits(folder / "int4-base", ids, False)
    with torch.no_grad():
        ours, theirs = (log_softmax(m(torch.tensor([ids])).logits[0].numpy()) for m in (model, plain))
    print(
        f"onnx-int4 against its dequantized weights {kld(runtime, ours).mean():.2e}, the checkpoint's {kld(runtime, theirs).mean():.2e}"
    )
    assert kld(runtime, ours).mean() < kld(runtime, theirs).mean() / 10
    set_params(
        workdir, lora={"top_layers": None}, train={"max_steps": 2, "batch_size": 4, "eval_steps": 2, "save_steps": 2}
    )
    weights = folder / "int4-base" / "model.onnx"
    result = run(
        "train", "--model", tiny_model, "--weights", weights, "--data", prepared, "--out", "adapter", "--live", "live"
    )
    assert result.exit_code == 0, result.output
    assert f"training from {weights}" in result.output
