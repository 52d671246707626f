"""Stage quantize: a GGUF -> one quant variant with llama.cpp's llama-quantize.

It quantizes the merged f16 GGUF (the quantize stages) and the base model (quantize-base: the
base of the `+lora` variants, quantized once). A variant is a quant type (q4_k_m), or a type
with the suffix `-imatrix` (q4_k_m-imatrix): quantized with the importance matrix of the imatrix
stage. A base that already is of the wanted type (the embedded default arrives as Q4_K_M) is
copied byte for byte: quantizing it again would only round it again. It also records what the
file really holds: tensor types by count and by weights, and bits per weight. Models whose width
is not a multiple of 256 (Qwen2.5 0.5B: 896) fall back from k-quants to q5_0/q8_0 on many
tensors, so "Q4_K_M" is not four and a half bits there; `quantize.tensor_types` and its
siblings override the type tensor by tensor (a 32-block type such as q4_0 fits every width).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import click

from edgetune.core.config import QuantizeParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import atomic_path, write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.variants import IMATRIX
from edgetune.gguf import header, llamacpp
from edgetune.gguf.files import check_gguf, tensor_stats


def known_types() -> list[str]:
    """The quant types the pinned llama-quantize lists in its help ("  15  or  Q4_K_M  : ...")."""
    proc = subprocess.run([str(llamacpp.tool("llama-quantize")), "--help"], capture_output=True, text=True)
    return re.findall(r"^\s*\d+\s+or\s+(\w+)\s*:", proc.stdout + proc.stderr, re.M)


def file_type(variant: str) -> tuple[str, bool]:
    """Check a variant name against the quant types llama-quantize knows: (TYPE upper-case, with imatrix?)."""
    name = variant.removesuffix(IMATRIX)
    known = known_types()
    if name.upper() not in known:
        raise EdgetuneError(
            f"params.yaml: quantize.types: unknown quant type {name!r}. llama-quantize knows: {', '.join(k.lower() for k in known)} "
            f"(add {IMATRIX} to a type to quantize it with the importance matrix)."
        )
    return name.upper(), variant.endswith(IMATRIX)


def fallbacks(log: str) -> list[dict]:
    """Tensors whose width the wanted type's blocks do not divide, as llama-quantize reports them
    (896-wide Qwen 0.5B: every k-quant falls back to a 32-block type on many tensors)."""
    found = re.finditer(
        r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+(\S+)\).*?"
        r"falling back to\s+(\S+)",
        log,
    )
    return [{"tensor": m[1], "wanted": m[2], "got": m[3]} for m in found]


def file_type_of(gguf: Path) -> str:
    """The type a GGUF says it was quantized to (general.file_type): F16, Q4_K_M, ..."""
    from gguf import LlamaFileType

    file_type = header.read(gguf).fields.get("general.file_type")
    if file_type is None:
        return "unknown"
    return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")


def overrides(p: QuantizeParams) -> list[str]:
    """llama-quantize's per-tensor type flags from params.yaml."""
    flags = [f for name, t in p.tensor_types.items() for f in ("--tensor-type", f"{name}={t}")]
    if p.output_tensor_type:
        flags += ["--output-tensor-type", p.output_tensor_type]
    if p.token_embedding_type:
        flags += ["--token-embedding-type", p.token_embedding_type]
    return flags


@click.command("quantize")
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="GGUF to quantize: the merged f16, or the base.",
)
@click.option(
    "--type", "variant", required=True, help="llama.cpp quant type, e.g. q4_k_m; q4_k_m-imatrix: with --imatrix."
)
@click.option(
    "--imatrix",
    "matrix",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Importance matrix, for -imatrix variants.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--stats",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON: tensor types and bits per weight.",
)
@reads("quantize.tensor_types", "quantize.output_tensor_type", "quantize.token_embedding_type")
def quantize(model: Path, variant: str, matrix: Path | None, out: Path, stats: Path, params):
    """Quantize the GGUF MODEL to TYPE with llama-quantize (or copy it, if it already is of TYPE)."""
    check_outputs(inputs=[model, matrix], files=[out, stats])
    p = params.quantize
    name, with_imatrix = file_type(variant)
    if with_imatrix and not (matrix and matrix.is_file()):
        raise EdgetuneError(
            f"{variant}: needs an importance matrix; --imatrix {matrix} is not a file (`dvc repro imatrix`)."
        )
    check_gguf(model)  # read here for its type, before llama-quantize reads it whole
    if with_imatrix:
        check_gguf(matrix, whole=False)  # llama-quantize reads it whole
    source_type, flags = file_type_of(model), overrides(p)
    with atomic_path(out, ".gguf") as tmp:
        if source_type == name and not (with_imatrix or flags):
            shutil.copyfile(model, tmp)  # already this type: the very file, not a second rounding
            log = ""
        else:
            # A source that is itself quantized (another type than asked) can only be rounded again.
            again = [] if source_type in ("F32", "F16", "BF16") else ["--allow-requantize"]
            log = run_quantize(
                [*again, *flags, *(["--imatrix", matrix] if with_imatrix else []), model, tmp, name], variant
            )
        result = {
            "type": variant.lower(),
            "source_type": source_type.lower(),
            "copied": not log,
            **tensor_stats(tmp),
            "fallbacks": fallbacks(log),
        }
        if with_imatrix:  # llama-quantize: "loaded 168 importance matrix entries from ... computed on 16 chunks"
            found = re.search(r"loaded (\d+) importance matrix entries .* computed on (\d+) chunks", log)
            if not found:
                raise EdgetuneError(
                    f"llama-quantize did not report loading {matrix}; its output ends with:\n{log[-800:]}"
                )
            result["imatrix"] = {"entries": int(found[1]), "chunks": int(found[2])}
    write_json(stats, result)
    types = ", ".join(f"{k}: {v['tensors']}" for k, v in result["tensor_types"].items())
    how = f"copied from {model}" if result["copied"] else f"{source_type} -> {name}"
    click.echo(
        f"{out}: {result['model_bytes'] / 1e6:.0f} MB, {result['bits_per_weight']:.2f} bits/weight, {how} ({types})"
    )


def run_quantize(args: list, variant: str) -> str:
    try:
        return llamacpp.run([llamacpp.tool("llama-quantize"), *args, os.cpu_count() or 1], f"llama-quantize {variant}")
    except EdgetuneError as e:
        if "requires an imatrix" in str(e):  # the 1- to 3-bit IQ types, for instance
            raise EdgetuneError(
                f"params.yaml: quantize.types: {variant} needs an importance matrix; "
                f"ask for {variant}{IMATRIX} instead.\n{e}"
            ) from None
        raise
