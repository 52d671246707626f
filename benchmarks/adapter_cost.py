"""What the run-time adapter costs in speed, and which adapter shapes cost less.

The +lora variants apply the GGUF LoRA at every token: each adapted matrix adds two thin
matmuls, and llama.cpp moves the adapted weights off its repacked fast path. This times
llama-completion (the llama.cpp tool that takes --lora; llama-bench does not) on the run's
quantized base, alone and with adapters of several shapes, all at the same thread count:

    python benchmarks/adapter_cost.py             # after `dvc repro`, from the project root

The trained adapter is timed as it is; the other shapes are PEFT adapters with random weights on
the same base (speed does not depend on the values), converted with llama.cpp's converter.
"""

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edgetune.core import params
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files
from edgetune.report import environment
from edgetune.train.adapter import adapter_targets

SHAPES = {  # name: (target modules, adapted top layers or None for all, rank)
    "attention only, top 12, r16": (["q_proj", "k_proj", "v_proj", "o_proj"], 12, 16),
    "all-linear, top 6, r16": ("all-linear", 6, 16),
    "all-linear, top 12, r8": ("all-linear", 12, 8),
    "all-linear, all layers, r16": ("all-linear", None, 16),
}


def timed(base: Path, lora: Path | None, threads: int, prompt: Path, tokens: int) -> tuple[float, float]:
    """Prompt and generation tokens/s of one llama-completion run."""
    log = subprocess.run(
        [
            llamacpp.tool("llama-completion"),
            "-m",
            base,
            *(["--lora", lora] if lora else []),
            "-f",
            prompt,
            "-n",
            str(tokens),
            "--ignore-eos",
            "--temp",
            "0",
            "-no-cnv",
            "-t",
            str(threads),
            "-ngl",
            "0",
            "-c",
            "1024",
        ],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
        stdin=subprocess.DEVNULL,
    ).stderr
    p = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    g = re.search(r"common_perf_print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs", log)
    return 1000 * int(p[2]) / float(p[1]), 1000 * int(g[2]) / float(g[1])


def random_adapter(base: Path, targets, top: int | None, r: int, out: Path) -> Path:
    """A PEFT adapter of this shape with random weights, as a GGUF LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    shape = dataclasses.replace(params.Reading(("lora",)).lora, r=r, target_modules=targets, top_layers=top)
    modules = adapter_targets(shape, model)  # as train picks them
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=modules, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out / "peft")
    gguf = out / "lora.gguf"
    subprocess.run(
        [
            sys.executable,
            llamacpp.source() / "convert_lora_to_gguf.py",
            out / "peft",
            "--base",
            base,
            "--outtype",
            "f16",
            "--outfile",
            gguf,
        ],
        check=True,
        capture_output=True,
    )
    return gguf


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="q4_k_m", help="the quantized base to time (default: q4_k_m)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    # the files evaluate measured for the <type>+lora variant: the quantized base and the trained adapter
    base, trained = Files.recorded(json.loads(Path(f"reports/eval/{args.type}+lora.json").read_text())["files"]).paths
    print(environment.one_line(environment.describe()) + "\n")
    print(
        f"llama-completion on {base}, {args.threads} threads, pp{args.prompt_tokens} tg{args.gen_tokens}, "
        f"median of {args.repetitions} rounds; cost against the base alone:\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.txt"
        prompt.write_text("你好" * args.prompt_tokens, encoding="utf-8")

        adapters = {
            "none (the base alone)": None,
            "trained (lora.* of params.yaml)": trained,
        }
        for label, (targets, top, r) in SHAPES.items():
            folder = Path(tmp) / str(len(adapters))
            folder.mkdir()
            adapters[label] = random_adapter(Path("models/base"), targets, top, r, folder)
        # Round after round over every adapter, so that a slower minute of the machine hits all alike.
        runs = {label: [] for label in adapters}
        for _ in range(args.repetitions):
            for label, lora in adapters.items():
                runs[label].append(timed(base, lora, args.threads, prompt, args.gen_tokens))
        alone = [statistics.median(r[i] for r in runs["none (the base alone)"]) for i in (0, 1)]
        print(f"  {'adapter':<32} {'MB':>6} {'pp tok/s':>9} {'tg tok/s':>9} {'pp cost':>8} {'tg cost':>8}")
        for label, lora in adapters.items():
            pp, tg = (statistics.median(r[i] for r in runs[label]) for i in (0, 1))
            size = f"{lora.stat().st_size / 1e6:6.1f}" if lora else f"{'':>6}"
            print(
                f"  {label:<32} {size} {pp:9.0f} {tg:9.1f} {100 * (1 - pp / alone[0]):7.0f}% {100 * (1 - tg / alone[1]):7.0f}%"
            )


if __name__ == "__main__":
    main()
