"""QLoRA on a 4-bit base: nf4 under fp32 norms, trained and merged into the 16-bit base.

It runs for real on the tiny model: bitsandbytes' CPU backend does nf4.
"""

import json
import math

import torch
from conftest import live_summary, run, set_params

from edgetune.train.qlora import load_4bit


def train(workdir, model, data, out="adapter"):
    return run("train", "--model", model, "--data", data, "--out", workdir / out, "--live", workdir / f"{out}-live")


def test_4bit_base_is_nf4_under_fp32_norms(tiny_model):
    import bitsandbytes as bnb

    model = load_4bit(tiny_model, bf16=False, device="cpu", gradient_checkpointing=False)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in name}
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears.values())
    weight = next(iter(linears.values())).weight
    assert weight.quant_state.quant_type == "nf4" and weight.quant_state.nested  # double quantization
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "norm" in n)


def test_qlora_trains_and_merges_into_the_16_bit_base(workdir, tiny_model, prepared):
    from safetensors.torch import load_file

    # With checkpointing on, as the README's QLoRA line runs it.
    set_params(
        workdir,
        lora={"quantization": "4bit", "top_layers": None},
        train={"max_steps": 3, "batch_size": 4, "eval_steps": 3, "save_steps": 3, "gradient_checkpointing": True},
    )
    result = train(workdir, tiny_model, prepared)
    assert result.exit_code == 0, result.output
    summary = live_summary(workdir)
    assert summary["qlora"] is True and summary["steps"] == 3 and math.isfinite(summary["train_loss"])

    result = run("merge", "--base", tiny_model, "--adapter", workdir / "adapter", "--out", workdir / "merged")
    assert result.exit_code == 0, result.output
    base, merged = load_file(tiny_model / "model.safetensors"), load_file(workdir / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()
    adapter = load_file(workdir / "adapter" / "adapter_model.safetensors")
    config = json.loads((workdir / "adapter" / "adapter_config.json").read_text())
    # Merged = the 16-bit base + the adapter's update, exactly where the adapter is: no 4-bit rounding.
    name = "model.layers.1.mlp.down_proj"
    a, b = (adapter[f"base_model.model.{name}.lora_{x}.weight"].float() for x in "AB")
    expected = base[f"{name}.weight"].float() + (config["lora_alpha"] / config["r"]) * b @ a
    assert torch.allclose(merged[f"{name}.weight"].float(), expected, atol=1e-2)
    assert not torch.equal(merged[f"{name}.weight"].float(), base[f"{name}.weight"].float())
    embed = "model.embed_tokens.weight"  # untouched, only cast to the merge's bf16
    assert torch.equal(merged[embed], base[embed].to(merged[embed].dtype))


def test_unknown_quantization_is_refused(workdir, tiny_model, prepared):
    set_params(workdir, lora={"quantization": "8bit"})
    result = train(workdir, tiny_model, prepared)
    assert result.exit_code != 0 and "lora.quantization" in result.output and "'8bit'" in result.output
    assert not (workdir / "adapter").exists()
