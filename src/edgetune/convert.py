"""Stage convert: merged HF checkpoint -> f16 GGUF with llama.cpp's own convert_hf_to_gguf.py."""

import sys
from pathlib import Path

import click

from . import llamacpp
from .files import atomic_path, check_outputs


def convert_to_gguf(checkpoint: Path, out: Path, outtype: str = "f16") -> None:
    src = llamacpp.source()
    click.echo(f"converting {checkpoint} -> {out} ({outtype}) with {src / 'convert_hf_to_gguf.py'}")
    with atomic_path(out, ".gguf") as tmp:
        # The script puts its own gguf-py first on sys.path, so converter and format match.
        llamacpp.run(
            [sys.executable, src / "convert_hf_to_gguf.py", checkpoint, "--outtype", outtype, "--outfile", tmp],
            f"convert_hf_to_gguf.py on {checkpoint}",
        )


@click.command("convert")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("models/merged"), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="f16 GGUF to write.")
def convert(model: Path, out: Path):
    """Convert the merged HF checkpoint MODEL to an f16 GGUF."""
    check_outputs(inputs=[model], files=[out])
    convert_to_gguf(model, out, "f16")
