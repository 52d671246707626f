"""How fast a GGUF variant runs and what it holds in memory, with llama.cpp's own tools, all on
the CPU alone (`-ngl 0`), as on a phone, also on a machine with a GPU.

  speed       llama-bench prompt processing (pp) and generation (tg) tokens/s at a thread count,
              for a single GGUF (llama-bench takes no adapter)
  completion  pp and tg tokens/s of llama-completion, which takes the adapter
  memory      peak resident memory of llama-completion answering one prompt at a context length
              (the KV cache is allocated for the whole context up front)
  read        the bytes decoding one token reads (a phone's memory bandwidth over these bounds its
              decode speed)
"""

import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from edgetune.core.config import BenchParams
from edgetune.core.errors import EdgetuneError
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
