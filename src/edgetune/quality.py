"""Stage quality: what quantization costs beyond the task metric, with llama.cpp's own tool.

For each quant variant (merged, and the quantized base with the adapter applied by `--lora`),
against the f16 GGUF on the same held-out text (the run's test split in the model's template): KL divergence of the next-token distributions (mean, 99th
percentile), the perplexity ratio, and how often both pick the same top token. The f16
logits go to a temporary file (`--kl-divergence-base`), kept small by a short text: every
saved token costs a full vocabulary row (152k wide for Qwen).
"""

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Annotated

import click

from . import llamacpp, params
from .errors import EdgetuneError
from .files import check_outputs, read_jsonl, write_json
from .params import Positive, Range
from .prompts import plain_text
from .variants import Files, QuantizeParams, existing_files, names


@dataclasses.dataclass
class QualityParams:
    ctx: Annotated[int, Range(min=8)] = 128  # tokens per chunk; the second half of each is scored
    chunks: Positive = 8
    threads: Positive | None = None


# llama-perplexity's summary lines -> metric names
PATTERNS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "ppl_f16": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)",
    "kld_mean": r"Mean\s+KLD:\s*([-\d.]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*([-\d.]+)",
    "kld_max": r"Maximum KLD:\s*([-\d.]+)",
    "same_top_token": r"Same top p:\s*([\d.]+)",
}


def parse(output: str, where: str) -> dict:
    found = {name: re.search(pattern, output) for name, pattern in PATTERNS.items()}
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise EdgetuneError(
            f"{where}: llama-perplexity printed no {', '.join(missing)}; its output ends with:\n{output[-800:]}"
        )
    values = {name: float(m.group(1)) for name, m in found.items()}
    values["same_top_token"] /= 100
    return values


def kl_divergence(f16: Path, variants: dict[str, Files], text: Path, p: QualityParams) -> dict[str, dict]:
    tool = llamacpp.tool("llama-perplexity")
    common = ["-f", text, "-c", str(p.ctx), "--chunks", str(p.chunks)] + (["-t", str(p.threads)] if p.threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "f16.kld"
        llamacpp.run([tool, "-m", f16, *common, "--kl-divergence-base", logits], f"llama-perplexity on {f16}")
        results = {}
        for name, files in variants.items():
            adapter = ["--lora", files.lora] if files.lora else []
            out = llamacpp.run(
                [tool, "-m", files.gguf, *adapter, *common, "--kl-divergence-base", logits, "--kl-divergence"],
                f"llama-perplexity --kl-divergence on {name}",
            )
            results[name] = parse(out, name)
            click.echo(
                f"{name}: KLD {results[name]['kld_mean']:.4f} (p99 {results[name]['kld_p99']:.4f}), "
                f"PPL ratio {results[name]['ppl_ratio']:.4f}, same top token {results[name]['same_top_token']:.3f}"
            )
    return results


@click.command("quality")
@click.option(
    "--f16",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The f16 GGUF: the reference.",
)
@click.option(
    "--prefix",
    type=click.Path(path_type=Path),
    required=True,
    help="Quant variants are PREFIX-<type>.gguf, one per quantize.types, and PREFIX-base-<type>.gguf + PREFIX-lora.gguf.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("data/processed/test.jsonl"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/quality.json"), show_default=True
)
def quality(f16: Path, prefix: Path, data: Path, out: Path):
    """KL divergence, perplexity ratio and top-token agreement of each quant variant against F16."""
    p = params.load("quality", QualityParams)
    variants = existing_files(prefix, names(params.load("quantize", QuantizeParams).types)[1:])
    check_outputs(inputs=[f16, data, *(f for v in variants.values() for f in v.paths)], files=[out])
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "held_out.txt"
        text.write_text(plain_text(read_jsonl(data)), encoding="utf-8")
        results = kl_divergence(f16, variants, text, p)
    write_json(out, {"reference": "f16", "ctx": p.ctx, "chunks": p.chunks, "variants": results})
