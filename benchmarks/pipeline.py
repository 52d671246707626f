"""Benchmark the default pipeline: per-stage wall time, training tokens/s, and evaluation
throughput per variant next to llama.cpp's raw prompt-processing rate (llama-bench) for the same
GGUF file. The ratio says how much of llama.cpp's speed the evaluation harness keeps.

    python benchmarks/pipeline.py                 # throughput of the last run + llama-bench
    python benchmarks/pipeline.py --time-stages   # also re-run every stage (dvc repro --force), timed

Run from the project root after `dvc repro` (or `make bench`).
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from edgetune.core.variants import names
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files
from edgetune.report import environment


def stages_in_order() -> list[str]:
    """Stage names in dvc.yaml's order (a valid run order), each foreach item on its own."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True, check=True).stdout
    return out.split()


def time_stages() -> dict[str, float]:
    times = {}
    for stage in stages_in_order():
        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "--force", "--single-item", stage], check=True, capture_output=True)
        times[stage] = time.perf_counter() - start
        print(f"  {stage:<24} {times[stage]:8.1f} s", flush=True)
    return times


def llama_bench_pp(gguf: Path, n_prompt: int, threads: int) -> float:
    """llama-bench prompt processing, tokens/s, for a prompt as long as the test split's average."""
    out = subprocess.run(
        [
            llamacpp.tool("llama-bench"),
            "-m",
            gguf,
            "-p",
            str(n_prompt),
            "-n",
            "0",
            "-t",
            str(threads),
            "-r",
            "3",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-stages", action="store_true", help="re-run every stage with dvc repro --force, timed")
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    threads = params["evaluate"].get("threads") or os.cpu_count()
    print(environment.one_line(environment.describe()) + "\n")  # the machine the figures below belong to

    if args.time_stages:
        print("per-stage wall time (dvc repro --force --single-item):")
        times = time_stages()
        print(f"  {'total':<24} {sum(times.values()):8.1f} s")

    train = json.loads(Path("reports/train/metrics.json").read_text())
    if train.get("tokens_seen") and train.get("train_runtime"):
        print(
            f"\ntraining: {train['tokens_seen']} tokens in {train['train_runtime']:.0f} s = "
            f"{train['tokens_seen'] / train['train_runtime']:.0f} tokens/s (non-padding, evaluation included)"
        )

    print(f"\nevaluation throughput ({threads} threads) vs llama-bench prompt processing of the same file:")
    print(
        f"  {'variant':<10} {'samples/s':>10} {'prompt tok/s':>13} {'computed tok/s':>15} {'llama-bench pp':>15} {'ratio':>6}"
    )
    for variant in ["base", *names(params["quantize"]["types"])]:
        result_file = Path(f"reports/eval/{variant}.json")
        if not result_file.is_file():
            continue
        r = json.loads(result_file.read_text())
        files = Files.recorded(r["files"])  # the file evaluate measured
        if files.lora or not files.gguf.is_file():  # llama-bench takes no adapter
            continue
        gguf = files.gguf
        n_prompt = round(r["prompt_tokens"] / r["n_samples"])
        pp = llama_bench_pp(gguf, n_prompt, threads)
        print(
            f"  {variant:<10} {r['samples_per_second']:10.2f} {r['prompt_tokens_per_second']:13.0f} "
            f"{r['evaluated_tokens_per_second']:15.0f} {pp:15.0f} {r['evaluated_tokens_per_second'] / pp:6.2f}"
        )
    print(
        "\nprompt tok/s counts every prompt token; computed tok/s only those evaluated after the cached "
        "shared prefix; the ratio compares computed tokens with llama-bench's pp rate."
    )


if __name__ == "__main__":
    main()
