"""Core ML: `edgetune export-coreml` on the tiny model with a random adapter merged, and
`verify-coreml` on what it wrote. Core ML cannot run here; what is checked is what can be: the
package's interface, that its compressed weights are the merged model's rounded (not the base's),
and that the bundle ships the package as verified."""

import json
import re
import subprocess

import numpy as np
import pytest
from conftest import LABELS, REPO, committed, run, write_jsonl


@pytest.fixture(scope="module")
def verified(tiny_model, tiny_gguf, reviews, tmp_path_factory):
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    workdir = tmp_path_factory.mktemp("coreml")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora).save_pretrained(workdir / "adapter")
    from edgetune.core.prompts import messages

    rows = [{**r, "messages": messages(r["text"], LABELS[r["label"]], committed("prompt"))} for r in reviews[:40]]
    data = write_jsonl(workdir / "test.jsonl", rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        adapter = ["--adapter", workdir / "adapter"]
        result = run("export-coreml", "--model", tiny_model, *adapter, "--type", "int4", "--out", workdir / "int4")
        assert result.exit_code == 0, result.output
        result = run(
            "verify-coreml", "--model", workdir / "int4", "--base", tiny_model, *adapter, "--f16", tiny_gguf,
            "--data", data, "--out", workdir / "coreml-int4.json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return workdir, json.loads((workdir / "coreml-int4.json").read_text())


def test_the_package_takes_a_prompt_of_any_length_and_returns_every_positions_logits(verified):
    _, v = verified
    assert v["spec_version"] == 9 and v["tested_on_device"] is False  # iOS 18's ML Program
    assert {k: (s["ranges"], s["dtype"]) for k, s in v["inputs"].items()} == {
        "input_ids": ([[1, 1], [2, 512]], "INT32"),
        "attention_mask": ([[1, 1], [2, 512]], "INT32"),
    }
    assert list(v["outputs"]) == ["logits"] and v["outputs"]["logits"]["dtype"] == "FLOAT16"
    assert (
        v["ops"]["linear"] + v["ops"]["matmul"] == 15 + 4
    )  # 7 projections and 2 attention products a layer, the output
    assert v["ops"]["constexpr_blockwise_shift_scale"] == v["compressed_tensors"]


def test_its_weights_are_the_merged_model_rounded_to_int4(verified, tiny_model):
    """Each compressed weight, dequantized, is within half a 4-bit step of the merged model's (the
    scale of its 32-weight block: max |w| / 7, at most), and nearer to it than to the base's: the
    adapter is in the package."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgetune.runtimes.coreml.export import merged_model
    from edgetune.runtimes.coreml.verify import compressed_weights, program_of, weight_errors

    workdir, v = verified
    _, program = program_of(workdir / "int4" / "model.mlpackage")
    compressed = compressed_weights(program)
    merged = {
        n.replace(".", "_"): p.detach().numpy()
        for n, p in merged_model(tiny_model, workdir / "adapter").named_parameters()
    }
    base = {n.replace(".", "_"): p.detach().numpy() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).named_parameters()}  # fmt: skip
    errors, sources = weight_errors(compressed, merged, workdir)
    assert errors == pytest.approx(v["weight_error"]["per_tensor"])
    assert len(compressed) == v["compressed_tensors"] and v["matrices"] == 15
    for name, w in compressed.items():
        ref = merged[sources[name]]
        blocks = np.abs(ref).reshape(ref.shape[0], -1, 32).max(axis=-1, keepdims=True)
        step = np.repeat(blocks / 7, 32, axis=-1).reshape(ref.shape)
        assert (np.abs(w - ref) <= step / 2 + 1e-3 * np.abs(ref) + 1e-6).all(), name
        if "proj" in sources[name]:
            assert np.linalg.norm(w - ref) < np.linalg.norm(w - base[sources[name]]), name
    assert 0.02 < v["weight_error"]["mean"] < 0.2  # int4's rounding: neither nothing nor noise
    w = v["weights_in_pytorch"]
    assert w["computed_by"] == "python" and w["scored_tokens"] > 0


def test_the_bundle_ships_the_package_as_verified_with_a_swift_recipe(verified, reviews, qwen_tokenizer):
    from edgetune.core.prompts import messages, render_prompt

    workdir, v = verified
    metrics = workdir / "metrics.json"
    metrics.write_text(json.dumps({"variants": {}, "coreml": {"coreml-int4": v}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("export-runtime-bundle", "--metrics", metrics, "--variant", "coreml-int4", "--out", "bundle")
        assert result.exit_code == 0, result.output
    bundle = workdir / "bundle"
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle).returncode == 0
    shipped = sorted(line.split(maxsplit=1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines())
    assert "model.mlpackage/Manifest.json" in shipped and len(shipped) == len(v["files"])
    readme = (bundle / "README.md").read_text()
    assert "**Not run, here or on a device**" in readme
    before, after = re.search(r"tokenizer.encode\(text: (\".*\") \+ review \+ (\".*\")\)", readme).groups()
    text = reviews[0]["text"]
    prompt = render_prompt(messages(text, None, committed("prompt")), qwen_tokenizer)
    assert [json.loads(before), json.loads(after)] == prompt.split(text)
