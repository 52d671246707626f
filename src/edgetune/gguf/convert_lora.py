"""Stage convert-lora: the PEFT adapter -> a GGUF LoRA with llama.cpp's own convert_lora_to_gguf.py.

llama.cpp applies it at run time on the quantized base (`--lora` in llama-cli, llama-server and
llama-perplexity; `lora_path` in llama-cpp-python). It stays in 16 bits: nothing the training
bought is rounded to the base's few bits.
"""

import sys
from pathlib import Path

import click

from edgetune.core.files import atomic_path
from edgetune.core.outputs import check_outputs
from edgetune.core.weights import read_adapter
from edgetune.gguf import llamacpp


@click.command("convert-lora")
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/adapter"),
    show_default=True,
)
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF base the adapter was trained on: its config names the tensors.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="GGUF LoRA to write.")
def convert_lora(adapter: Path, base: Path, out: Path):
    """Convert the PEFT ADAPTER to a 16-bit GGUF LoRA with llama.cpp's convert_lora_to_gguf.py."""
    check_outputs(inputs=[adapter, base], files=[out])
    # The converter itself writes an empty LoRA for an adapter of another model, and NaN weights as they are.
    read_adapter(adapter, base)
    src = llamacpp.source()
    with atomic_path(out, ".gguf") as tmp:
        llamacpp.run(
            [
                sys.executable,
                src / "convert_lora_to_gguf.py",
                adapter,
                "--base",
                base,
                "--outtype",
                "f16",
                "--outfile",
                tmp,
            ],
            f"convert_lora_to_gguf.py on {adapter}",
        )
    click.echo(f"{out}: GGUF LoRA, {out.stat().st_size / 1e6:.1f} MB")
