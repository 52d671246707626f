"""Training beyond plain LoRA on one process: QLoRA on a 4-bit base, and DDP across processes.

Both run for real on the tiny model: bitsandbytes' CPU backend does nf4, and torch's gloo
backend runs DistributedDataParallel between two CPU processes as NCCL does between GPUs.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run, set_params

from edgetune.train import base_weights, distributed
from edgetune.train.qlora import load_4bit


def train(workdir, model, data, out="adapter"):
    return run("train", "--model", model, "--data", data, "--out", workdir / out, "--live", workdir / f"{out}-live")


def live_summary(workdir, out="adapter") -> dict:
    return json.loads((workdir / f"{out}-live" / "metrics.json").read_text())


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


def test_unknown_quantization_is_refused(workdir, tiny_model, prepared):
    set_params(workdir, lora={"quantization": "8bit"})
    result = train(workdir, tiny_model, prepared)
    assert result.exit_code != 0 and "lora.quantization" in result.output and "'8bit'" in result.output
    assert not (workdir / "adapter").exists()


def test_ddp_in_two_processes_trains_once_and_writes_once(workdir, tiny_model, prepared):
    """torchrun starts two ranks, as `accelerate launch` does on a two-GPU machine, checkpointing activations."""
    set_params(
        workdir,
        lora={"top_layers": None},
        train={
            "max_steps": 3,
            "batch_size": 2,
            "eval_steps": 3,
            "save_steps": 3,
            "logging_steps": 1,
            "gradient_checkpointing": True,
        },
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "edgetune.cli",
        "train",
        "--model",
        tiny_model,
        "--data",
        prepared,
        "--out",
        workdir / "adapter",
        "--live",
        workdir / "adapter-live",
    ]
    proc = subprocess.run([str(c) for c in cmd], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = live_summary(workdir)
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert summary["epoch"] == pytest.approx(3 * 2 * 2 / len((prepared / "train.jsonl").read_text().splitlines()))
    # Each rank divides by all ranks' tokens and DDP averages: the loss of a random model stays ln(vocab).
    assert abs(summary["train_loss"] - math.log(151_665)) < 1.0
    assert proc.stdout.count("adapter saved") == 1
    assert (workdir / "adapter" / "adapter_model.safetensors").is_file()
    assert [c.name for c in (workdir / "adapter" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]


def test_the_relaunch_command_is_one_accelerate_accepts(monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    config = REPO / "configs" / "accelerate.yaml"
    command = distributed.accelerate_command(4, config, ["train", "--model", "models/base"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(command[3:])
    assert args.num_processes == 4 and args.config_file == str(config) and args.module
    assert [args.training_script, *args.training_script_args] == ["edgetune.cli", "train", "--model", "models/base"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    distributed.relaunch_on_gpus(REPO / "no-such.yaml")  # no GPU visible here: nothing to relaunch


def test_a_run_killed_while_dvclive_wrote_its_summary_resumes_at_the_last_step(tmp_path, monkeypatch):
    from edgetune.train.resume import open_live

    monkeypatch.chdir(tmp_path)
    live_dir = tmp_path / "live"
    (live_dir / "plots" / "metrics" / "eval").mkdir(parents=True)
    (live_dir / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n0\t2.5\n1\t2.1\n2\t1.9\n")
    (live_dir / "plots" / "metrics" / "eval" / "loss.tsv").write_text("step\tloss\n1\t2.0\n")
    (live_dir / "metrics.json").write_text("")  # the kill landed inside dvclive's rewrite
    live = open_live(live_dir, resume=True)
    assert live.step == 3  # the step after the last one logged
    live.log_metric("loss", 1.7)
    live.next_step()
    live.end()
    rows = (live_dir / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert json.loads((live_dir / "metrics.json").read_text())["loss"] == 1.7
