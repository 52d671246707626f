"""Stage quality: what quantization costs beyond the task metric, with llama.cpp's own tool.

One quant variant (a merged quant, or the quantized base with the adapter applied by `--lora`)
against the f16 GGUF on held-out text (the run's test split in the model's template): KL
divergence of the next-token distributions (mean, 99th percentile), the perplexity ratio, and
how often both pick the same top token. dvc.yaml runs it once per variant, so a new quant type
measures only itself. The f16 logits go to a temporary file (`--kl-divergence-base`), kept
small by a short text: every saved token costs a full vocabulary row (152k wide for Qwen).
"""

import re
import tempfile
from pathlib import Path

import click

from edgetune.core.config import QualityParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_jsonl, write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import plain_text
from edgetune.core.variants import F16
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files

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


def kl_divergence(f16: Path, files: Files, name: str, text: Path, p: QualityParams) -> dict:
    tool = llamacpp.tool("llama-perplexity")
    common = ["-f", text, "-c", str(p.ctx), "--chunks", str(p.chunks)] + (["-t", str(p.threads)] if p.threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "f16.kld"
        llamacpp.run([tool, "-m", f16, *common, "--kl-divergence-base", logits], f"llama-perplexity on {f16}")
        out = llamacpp.run(
            [tool, "-m", files.gguf, *files.lora_flag, *common, "--kl-divergence-base", logits, "--kl-divergence"],
            f"llama-perplexity --kl-divergence on {name}",
        )
    result = parse(out, name)
    click.echo(
        f"{name}: KLD {result['kld_mean']:.4f} (p99 {result['kld_p99']:.4f}), "
        f"PPL ratio {result['ppl_ratio']:.4f}, same top token {result['same_top_token']:.3f}"
    )
    return result


@click.command("quality")
@click.option(
    "--f16",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The f16 GGUF: the reference.",
)
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The variant's GGUF.")
@click.option(
    "--lora", type=click.Path(dir_okay=False, path_type=Path), help="GGUF LoRA applied at run time (a +lora variant)."
)
@click.option("--variant", required=True, help="Its name in the reports: q4_k_m, q4_k_m+lora, ...")
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/processed/test.jsonl"),
    show_default=True,
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Its results (JSON).")
@reads("quality")
def quality(f16: Path, model: Path, lora: Path | None, variant: str, data: Path, out: Path, params):
    """KL divergence, perplexity ratio and top-token agreement of one variant (MODEL, plus LORA) against F16."""
    p = params.quality
    files = Files(model, lora)
    check_outputs(inputs=[f16, data, *files.paths], files=[out])
    Files(f16).check(whole=False)  # llama-perplexity reads them whole
    files.check(whole=False)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "held_out.txt"
        text.write_text(plain_text(read_jsonl(data)), encoding="utf-8")
        result = kl_divergence(f16, files, variant, text, p)
    write_json(out, {"variant": variant, "reference": F16, "ctx": p.ctx, "chunks": p.chunks, **result})
