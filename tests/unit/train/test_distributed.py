"""DDP across processes, and the relaunch on several GPUs.

torch's gloo backend runs DistributedDataParallel between two CPU processes as NCCL does between GPUs.
"""

import math
import os
import subprocess
import sys

import pytest
from conftest import REPO, live_summary, set_params

from edgetune.train import distributed


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
