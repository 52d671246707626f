"""Stage imatrix: an importance matrix for the quantizer, from the training text, with llama-imatrix.

A low-bit type rounds each block of weights to a few levels. The importance matrix (the mean
squared activation of every input column while the base model reads representative text) tells
llama-quantize whose rounding errors cost most, so it spends its few levels there. Variants named
`<type>-imatrix` in quantize.types are quantized with it, merged and base alike; the report sets
each beside its plain twin. The text is the run's own training split: the activations of the
task the model will do. It is the base's matrix, known before training, because the base of a
`+lora` variant is quantized before the adapter is trained on it.
"""

import re
import tempfile
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import atomic_path, read_jsonl
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import plain_text
from edgetune.gguf import llamacpp


@click.command("imatrix")
@click.option(
    "--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="The base GGUF."
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("data/processed/train.jsonl"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The importance matrix (GGUF)."
)
@reads("imatrix")
def imatrix(model: Path, data: Path, out: Path, params):
    """Compute an importance matrix for MODEL on the training text with llama-imatrix."""
    check_outputs(inputs=[model, data], files=[out])
    p = params.imatrix
    text = plain_text(read_jsonl(data))
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out, ".gguf") as matrix:
        # Run beside the text so the matrix records its name, not a random temporary path: the
        # same inputs give the same bytes, and DVC reruns nothing downstream.
        corpus = Path(tmp) / f"{data.stem}.txt"
        corpus.write_text(text, encoding="utf-8")
        log = llamacpp.run(
            [
                llamacpp.tool("llama-imatrix"),
                "-m",
                model.resolve(),
                "-f",
                corpus.name,
                "-o",
                matrix.resolve(),
                "--output-format",
                "gguf",
                "-c",
                p.ctx,
                "--chunks",
                p.chunks,
                "--no-ppl",
                *(["-t", p.threads] if p.threads else []),
            ],
            f"llama-imatrix on {model}",
            cwd=tmp,
        )
        if not matrix.stat().st_size:
            raise EdgetuneError(f"llama-imatrix wrote nothing for {model}; its output ends with:\n{log[-800:]}")
    chunks = re.search(r"computing over (\d+) chunks", log)  # fewer than asked when the text runs out
    click.echo(f"{out}: importance matrix from {chunks[1] if chunks else '?'} chunks of {p.ctx} tokens of {data}")
