"""Benchmark the train stage's step: LoRA on the 16-bit base vs QLoRA on the 4-bit one.

Runs `edgetune train` for a few steps on the project's own base model and training split,
once per mode, in a scratch folder (the pipeline's outputs are untouched), and prints
training tokens/s, wall time, peak resident memory and, on a GPU, peak GPU memory.

    python benchmarks/training.py                 # 8 steps each, the params.yaml settings
    python benchmarks/training.py --steps 20 --set train.gradient_checkpointing=true

Run from the project root after `dvc repro prepare` (models/base and data/processed).
"""

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from edgetune.report import environment

MODES = {"lora": "none", "qlora": "4bit"}


def run_mode(mode: str, steps: int, overrides: list[str], scratch: Path) -> dict:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["lora"]["quantization"] = MODES[mode]
    params["train"].update(max_steps=steps, save_steps=10**6, logging_steps=1)
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    work = scratch / mode
    (work / "data").mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    shutil.copy("data/processed/train.jsonl", work / "data" / "train.jsonl")
    (work / "data" / "val.jsonl").write_text("")  # the step alone, no validation passes
    start = time.perf_counter()
    subprocess.run(
        [
            "edgetune",
            "train",
            "--model",
            Path("models/base").resolve(),
            "--data",
            "data",
            "--out",
            "adapter",
            "--live",
            "live",
            "--accelerate-config",
            Path("configs/accelerate.yaml").resolve(),
        ],
        cwd=work,
        check=True,
        capture_output=True,
    )
    summary = json.loads((work / "live" / "metrics.json").read_text())
    summary["wall_s"] = time.perf_counter() - start
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    print(environment.one_line(environment.describe()) + "\n")  # the machine the figures below belong to
    print(
        f"{'mode':<6} {'steps':>5} {'tokens':>7} {'tokens/s':>9} {'train s':>8} {'wall s':>7} {'peak RSS GB':>12} {'peak GPU GB':>12}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            s = run_mode(mode, args.steps, args.overrides, Path(scratch))
            gpu = f"{s['peak_gpu_memory_gb']:12.2f}" if "peak_gpu_memory_gb" in s else f"{'-':>12}"
            print(
                f"{mode:<6} {s['steps']:>5} {s['tokens_seen']:>7} {s['tokens_per_second']:>9.1f} {s['train_runtime']:>8.1f} "
                f"{s['wall_s']:>7.1f} {s['peak_rss_gb']:>12.2f} {gpu}",
                flush=True,
            )


if __name__ == "__main__":
    main()
