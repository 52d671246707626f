"""lora.train_on: training starts from the dequantized weights of the quantized base that ships."""

import torch
from conftest import live_summary, run, set_params

from edgetune.train import base_weights


def test_lora_trains_on_the_dequantized_weights_of_a_quantized_base(workdir, tiny_model, tiny_gguf, prepared):
    """lora.train_on: the adapter learns on the very weights the quantized base file ships; with
    QLoRA those weights are then held in nf4."""
    from edgetune.gguf.dequantize import dequantized

    q8 = workdir / "base-q8_0.gguf"
    assert (
        run("quantize", "--model", tiny_gguf, "--type", "q8_0", "--out", q8, "--stats", workdir / "q8.json").exit_code
        == 0
    )
    weights = dequantized(q8).state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    plain = load_file_tensor(tiny_model, name)
    assert not torch.equal(weights[name], plain)  # rounded to q8_0 and back: other weights than the checkpoint's
    loaded = base_weights.load(
        tiny_model, q8, qlora=False, bf16=False, device="cpu", gradient_checkpointing=False, trust=False
    )
    assert torch.equal(loaded.state_dict()[name], weights[name])  # what training starts from
    in_bf16 = base_weights.load(
        tiny_model, q8, qlora=False, bf16=True, device="cpu", gradient_checkpointing=False, trust=False
    )
    assert in_bf16.state_dict()[name].dtype == torch.bfloat16 and torch.equal(
        in_bf16.state_dict()[name], weights[name].bfloat16()
    )
    assert in_bf16.model.rotary_emb.inv_freq.dtype == torch.float32  # positions as exact as llama.cpp's
    set_params(
        workdir, lora={"top_layers": None}, train={"max_steps": 2, "batch_size": 4, "eval_steps": 2, "save_steps": 2}
    )
    for quantization in ("none", "4bit"):
        set_params(workdir, lora={"quantization": quantization})
        out = f"adapter-{quantization}"
        result = run(
            "train",
            "--model",
            tiny_model,
            "--weights",
            q8,
            "--data",
            prepared,
            "--out",
            workdir / out,
            "--live",
            workdir / f"{out}-live",
        )
        assert result.exit_code == 0, result.output
        assert f"training from {q8}" in result.output and live_summary(workdir, out)["steps"] == 2
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".dequantized")) == []  # QLoRA's copy is gone


def load_file_tensor(folder, name):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")[name]
