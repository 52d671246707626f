"""Stage quality: what quantization costs beyond the task metric, measured by the variant's runtime.

One quant variant (a merged quant, or the quantized base with the adapter applied by `--lora`)
against the f16 GGUF on held-out text (the run's test split in the model's template): KL
divergence of the next-token distributions (mean, 99th percentile), the perplexity ratio, and
how often both pick the same top token. dvc.yaml runs it once per variant, so a new quant type
measures only itself. For a GGUF, llama.cpp's own llama-perplexity (runtimes/llamacpp/kld.py).
"""

import tempfile
from pathlib import Path

import click

from edgetune.core.files import read_jsonl, write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import plain_text
from edgetune.core.variants import F16
from edgetune.runtimes.registry import open_variant


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
    files, reference = open_variant(model, lora), open_variant(f16)
    check_outputs(inputs=[f16, data, *files.paths], files=[out])
    reference.check(whole=False)  # llama-perplexity reads them whole
    files.check(whole=False)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "held_out.txt"
        text.write_text(plain_text(read_jsonl(data)), encoding="utf-8")
        result = files.kl_divergence(reference, text, p.ctx, p.chunks, p.threads, (str(f16), variant))
    click.echo(
        f"{variant}: KLD {result['kld_mean']:.4f} (p99 {result['kld_p99']:.4f}), "
        f"PPL ratio {result['ppl_ratio']:.4f}, same top token {result['same_top_token']:.3f}"
    )
    write_json(out, {"variant": variant, "reference": F16, "ctx": p.ctx, "chunks": p.chunks, **result})
