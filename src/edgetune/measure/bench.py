"""Stage bench: how one variant runs on a device like a phone, measured by its runtime (for a GGUF,
llama.cpp's own tools: runtimes/llamacpp/speed.py).

  speed       the runtime's own benchmark (llama-bench): prompt processing (pp) and generation (tg)
              tokens/s at 1, 2 and all threads, for a variant without an adapter
  completion  pp and tg tokens/s answering a prompt (llama-completion) at all threads, with the
              adapter where the variant has one, and then its quantized base alone: the run-time
              adapter's cost is the difference between those two
  memory      peak resident memory generating a short answer at each context length
              (llama.cpp allocates the KV cache for the whole context up front)
  read        the bytes decoding one token reads: a phone's memory bandwidth divided by these is the
              most tokens/s it can decode (the report's device table)

dvc.yaml runs it once per variant; report gathers the results.

All run on the CPU alone, as on a phone, also on a machine with a GPU.
"""

import os
import tempfile
from pathlib import Path

import click

from edgetune.core.files import write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.runtimes.registry import open_variant


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
    files = open_variant(model, lora)
    check_outputs(inputs=files.paths, files=[out])
    files.check()  # whole: bytes_read_per_token reads their headers
    result = {"variant": variant, "threads": threads, "prompt_tokens": p.prompt_tokens, "gen_tokens": p.gen_tokens}
    result["bytes_read_per_token"] = files.bytes_read_per_token()
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.txt"
        prompt.write_text("你好" * p.prompt_tokens, encoding="utf-8")  # about one token each
        result["completion"] = c = files.speed(threads[-1], prompt, p)
        result["peak_rss_bytes"] = {str(n): files.peak_memory(n, p) for n in p.contexts}
        if not files.lora:
            result["speed"] = [files.bench(t, prompt, p) for t in threads]
        else:  # the same base without the adapter, the same way: what the adapter costs
            alone = files.without_adapter().speed(threads[-1], prompt, p)
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
