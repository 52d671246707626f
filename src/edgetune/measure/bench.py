"""Stage bench: how one variant runs on a device like a phone, measured with llama.cpp's own tools.

  speed       llama-bench prompt processing (pp) and generation (tg) tokens/s at 1, 2 and all
              threads, for a single GGUF (llama-bench takes no adapter)
  completion  pp and tg tokens/s of llama-completion at all threads, with the adapter where the
              variant has one, and then its quantized base alone: the run-time adapter's cost is
              the difference between those two
  memory      peak resident memory of llama-completion generating a short answer at each context length
              (the KV cache is allocated for the whole context up front)
  read        the bytes decoding one token reads: a phone's memory bandwidth divided by these is the
              most tokens/s it can decode (the report's device table)

dvc.yaml runs it once per variant; report gathers the results.

All run on the CPU alone (`-ngl 0`), as on a phone, also on a machine with a GPU.
"""

import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

import click

from edgetune.core.config import BenchParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.gguf import header, llamacpp
from edgetune.gguf.files import Files


def speed(gguf: Path, threads: int, p: BenchParams) -> dict:
    out = llamacpp.run(
        [
            llamacpp.tool("llama-bench"),
            "-m",
            gguf,
            "-p",
            p.prompt_tokens,
            "-n",
            p.gen_tokens,
            "-t",
            threads,
            "-r",
            p.repetitions,
            "-ngl",
            0,
            "-o",
            "json",
        ],
        f"llama-bench on {gguf}",
    )
    rows = json.loads(out[out.index("[") : out.rindex("]") + 1])
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return {"threads": threads, "pp_tokens_per_second": pp, "tg_tokens_per_second": tg}


def completion_speed(files: Files, threads: int, prompt: Path, p: BenchParams) -> dict:
    """Median pp and tg tokens/s of llama-completion (which takes --lora) over the repetitions."""
    runs = []
    for _ in range(p.repetitions):
        log = llamacpp.run(
            [
                llamacpp.tool("llama-completion"),
                "-m",
                files.gguf,
                *files.lora_flag,
                "-f",
                prompt,
                "-n",
                p.gen_tokens,
                "--ignore-eos",
                "--temp",
                0,
                "-no-cnv",
                "-t",
                threads,
                "-ngl",
                0,
                "-c",
                2 * (p.prompt_tokens + p.gen_tokens),
            ],
            f"llama-completion on {files.gguf}",
        )
        pp = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
        tg = re.search(r"common_perf_print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs", log)
        if not (pp and tg):
            raise EdgetuneError(
                f"llama-completion on {files.gguf} printed no timings; its output ends with:\n{log[-800:]}"
            )
        runs.append((1000 * int(pp[2]) / float(pp[1]), 1000 * int(tg[2]) / float(tg[1]), int(pp[2])))
    return {
        "threads": threads,
        "prompt_tokens": runs[0][2],
        "pp_tokens_per_second": statistics.median(r[0] for r in runs),
        "tg_tokens_per_second": statistics.median(r[1] for r in runs),
    }


def peak_rss(files: Files, context: int, p: BenchParams) -> int:
    """Peak resident bytes of llama-completion answering one prompt at this context length."""
    cmd = [
        str(c)
        for c in (
            llamacpp.tool("llama-completion"),
            "-m",
            files.gguf,
            *files.lora_flag,
            "-c",
            context,
            "-n",
            p.gen_tokens,
            "-p",
            "你好",
            "-no-cnv",
            "--temp",
            "0",
            "--no-warmup",
            "-ngl",
            0,
        )
    ]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty tool cannot block on a full pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise EdgetuneError(
                f"llama-completion on {files.gguf} at context {context} failed: {err.read().decode()[-800:]}"
            )
    return usage.ru_maxrss * 1024  # Linux reports KiB


def bytes_read_per_token(files: Files) -> dict:
    """What decoding one token reads from memory: every weight tensor once (of the token embedding
    a single row, unless the output layer is that same matrix) and the adapter's tensors; and, per
    token already in the context, its keys and values in the KV cache (f16, llama.cpp's default)."""
    model = header.read(files.gguf)
    tensors = {t.name: t.n_bytes for t in model.tensors}
    weights = sum(tensors.values())
    if "output.weight" in tensors:  # untied: the embedding is only looked up
        weights -= tensors.get("token_embd.weight", 0)
    adapter = sum(t.n_bytes for t in header.read(files.lora).tensors) if files.lora else 0

    def field(key: str, default=None):
        return model.fields.get(f"{arch}.{key}", default)

    arch = model.fields["general.architecture"]
    heads = field("attention.head_count")
    key = field("attention.key_length", field("embedding_length") // heads)
    value = field("attention.value_length", key)
    kv_heads = field("attention.head_count_kv", heads)  # a list where layers differ
    kv_heads = sum(kv_heads) if isinstance(kv_heads, list) else kv_heads * field("block_count")
    return {"weights": weights, "adapter": adapter, "kv_cache_per_context_token": 2 * kv_heads * (key + value)}


@click.command("bench")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The variant's GGUF.")
@click.option(
    "--lora", type=click.Path(dir_okay=False, path_type=Path), help="GGUF LoRA applied at run time (a +lora variant)."
)
@click.option("--variant", required=True, help="Its name in the reports: f16, q4_k_m, q4_k_m+lora, ...")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Its results (JSON).")
@reads("bench")
def bench(model: Path, lora: Path | None, variant: str, out: Path, params):
    """Speed (pp, tg tokens/s) and peak memory per context length of one variant (MODEL, plus LORA)."""
    p = params.bench
    threads = sorted({*p.threads, os.cpu_count() or 1})
    files = Files(model, lora)
    check_outputs(inputs=files.paths, files=[out])
    files.check()  # whole: bytes_read_per_token reads their headers
    result = {"variant": variant, "threads": threads, "prompt_tokens": p.prompt_tokens, "gen_tokens": p.gen_tokens}
    result["bytes_read_per_token"] = bytes_read_per_token(files)
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.txt"
        prompt.write_text("你好" * p.prompt_tokens, encoding="utf-8")  # about one token each
        result["completion"] = c = completion_speed(files, threads[-1], prompt, p)
        result["peak_rss_bytes"] = {str(n): peak_rss(files, n, p) for n in p.contexts}
        if not files.lora:
            result["speed"] = [speed(files.gguf, t, p) for t in threads]
        else:  # the same base without the adapter, the same way: what the adapter costs
            alone = completion_speed(Files(files.gguf), threads[-1], prompt, p)
            result["adapter_cost"] = {
                "base": alone,
                **{
                    f"{k}_cost": 1 - c[f"{k}_tokens_per_second"] / alone[f"{k}_tokens_per_second"]
                    for k in ("pp", "tg")
                },
            }
    click.echo(
        f"{variant}: pp {c['pp_tokens_per_second']:.0f}, tg {c['tg_tokens_per_second']:.1f} tok/s at "
        f"{c['threads']} threads (llama-completion), "
        + ", ".join(f"context {k}: {b / 2**30:.2f} GB" for k, b in result["peak_rss_bytes"].items())
    )
    write_json(out, result)
