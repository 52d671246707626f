"""Training on several GPUs: the train stage relaunches itself under `accelerate launch`.

One process per visible GPU, DistributedDataParallel, settings in configs/accelerate.yaml.
Inside the launched processes only the main one writes checkpoints' bookkeeping, metrics and
the adapter (the Trainer already saves checkpoints from the main process only).
"""

import os
import subprocess
import sys
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError


def launched() -> bool:
    """Already one of several processes started by `accelerate launch` or torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerate_command(processes: int, config: Path, argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(processes),
        "-m",
        "edgetune.cli",
        *argv,
    ]


def relaunch_on_gpus(config: Path) -> None:
    """With two or more GPUs visible and not yet launched, run this command again under DDP."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2 or launched():
        return
    if not config.is_file():
        raise EdgetuneError(
            f"{config}: no accelerate config, needed to train on the {gpus} visible GPUs. "
            "Restore configs/accelerate.yaml from the repository, or pass --accelerate-config, "
            "or make one GPU visible (CUDA_VISIBLE_DEVICES=0)."
        )
    command = accelerate_command(gpus, config, sys.argv[1:])
    click.echo(f"{gpus} GPUs visible: {' '.join(command)}")
    raise SystemExit(subprocess.call(command))
