"""Stage convert: merged HF checkpoint -> f16 GGUF with llama.cpp's own convert_hf_to_gguf.py."""

from pathlib import Path

import click

from edgetune.core.outputs import check_outputs
from edgetune.core.weights import check_checkpoint
from edgetune.gguf import llamacpp


@click.command("convert")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/merged"),
    show_default=True,
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="f16 GGUF to write.")
def convert(model: Path, out: Path):
    """Convert the merged HF checkpoint MODEL to an f16 GGUF."""
    check_outputs(inputs=[model], files=[out])
    check_checkpoint(model)  # the converter copies NaN weights into the GGUF as they are
    llamacpp.convert_checkpoint(model, out, "f16")
