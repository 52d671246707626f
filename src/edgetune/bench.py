"""Stage bench: how each GGUF runs on a device like a phone, measured with llama.cpp's own tools.

  speed   llama-bench prompt processing (pp) and generation (tg) tokens/s at 1, 2 and all threads
  memory  peak resident memory of llama-cli generating a short answer at each context length
          (the KV cache is allocated for the whole context up front)

Both run on the CPU alone (`-ngl 0`), as on a phone, also on a machine with a GPU.
"""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import click

from . import llamacpp, params
from .errors import EdgetuneError
from .files import check_outputs, write_json
from .params import Positive
from .variants import QuantizeParams, existing_ggufs


@dataclasses.dataclass
class BenchParams:
    threads: list[Positive] = dataclasses.field(default_factory=lambda: [1, 2])  # plus all cores
    prompt_tokens: Positive = 128
    gen_tokens: Positive = 32
    contexts: list[Positive] = dataclasses.field(default_factory=lambda: [512, 2048])
    repetitions: Positive = 2


def speed(gguf: Path, threads: int, p: BenchParams) -> dict:
    out = llamacpp.run([llamacpp.tool("llama-bench"), "-m", gguf, "-p", p.prompt_tokens, "-n", p.gen_tokens,
                        "-t", threads, "-r", p.repetitions, "-ngl", 0, "-o", "json"], f"llama-bench on {gguf}")
    rows = json.loads(out[out.index("["): out.rindex("]") + 1])
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return {"threads": threads, "pp_tokens_per_second": pp, "tg_tokens_per_second": tg}


def peak_rss(gguf: Path, context: int, p: BenchParams) -> int:
    """Peak resident bytes of llama-cli answering one prompt at this context length."""
    cmd = [str(c) for c in (llamacpp.tool("llama-cli"), "-m", gguf, "-c", context, "-n", p.gen_tokens, "-p", "你好",
                            "-st", "--temp", "0", "--no-warmup", "-ngl", 0)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise EdgetuneError(f"llama-cli on {gguf} at context {context} failed: {proc.stderr.read().decode()[-800:]}")
    return usage.ru_maxrss * 1024  # Linux reports KiB


@click.command("bench")
@click.option("--prefix", type=click.Path(path_type=Path), required=True, help="GGUF files are PREFIX-<variant>.gguf: f16 and each quant type.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/bench.json"), show_default=True)
def bench(prefix: Path, out: Path):
    """Speed (pp, tg tokens/s per thread count) and peak memory per context length of every GGUF."""
    p = params.load("bench", BenchParams)
    types = ["f16", *params.load("quantize", QuantizeParams).types]
    threads = sorted({*p.threads, os.cpu_count() or 1})
    ggufs = existing_ggufs(prefix, types)
    check_outputs(inputs=ggufs.values(), files=[out])
    results = {}
    for variant, gguf in ggufs.items():
        results[variant] = {"speed": [speed(gguf, t, p) for t in threads],
                            "peak_rss_bytes": {str(c): peak_rss(gguf, c, p) for c in p.contexts}}
        fastest = max(results[variant]["speed"], key=lambda s: s["tg_tokens_per_second"])
        click.echo(f"{variant}: tg {fastest['tg_tokens_per_second']:.1f} tok/s at {fastest['threads']} threads, "
                   + ", ".join(f"context {c}: {b / 2**30:.2f} GB" for c, b in results[variant]["peak_rss_bytes"].items()))
    write_json(out, {"threads": threads, "prompt_tokens": p.prompt_tokens, "gen_tokens": p.gen_tokens, "variants": results})
