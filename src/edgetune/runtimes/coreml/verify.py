"""Stage verify-coreml: what can be checked of a Core ML export on a machine without Core ML.

    edgetune verify-coreml --model models/coreml/int4 --base models/base --adapter models/adapter \\
        --f16 models/gguf/<name>-f16.gguf --data data/processed/test.jsonl --out reports/quality/coreml-int4.json

It reads the package back and records its spec version, inputs and outputs, the histogram of its
ops, each compressed weight dequantized against the merged model's (relative error per tensor),
and the merged model run in PyTorch with those weights against f16. It marks the variant untested
on a device.
"""

import collections
import json
from pathlib import Path

import click
import numpy as np

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import records, write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.variants import COREML
from edgetune.runtimes.coreml import PACKAGE
from edgetune.runtimes.coreml.export import INFO, TOKENIZER
from edgetune.train.merge import merged_model

_QUANTIZED = ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize")


def program_of(package: Path):
    """The package's ML Program read back into coremltools' MIL, its weights from weight.bin."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)  # no Core ML framework here to load it
    spec = mlmodel.get_spec()
    return spec, load(
        model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir
    )


def shipped_files(folder: Path) -> list[Path]:
    """The package's files (a folder tree an app compiles) and the tokenizer's, in a fixed order."""
    package = sorted((p for p in (folder / PACKAGE).rglob("*") if p.is_file()), key=str)
    return package + [folder / n for n in (INFO, *TOKENIZER) if (folder / n).is_file()]


def compressed_weights(program) -> dict[str, np.ndarray]:
    """Each compressed weight of the program, dequantized, by its op's name (coremltools names most
    after their HF tensor: p_m_model_layers_0_mlp_up_proj_weight_to_fp16_quantized)."""
    found = {}
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type not in _QUANTIZED:
                continue
            data = op.inputs["data"].val.astype(np.float32)
            scale = op.inputs["scale"].val.astype(np.float32)
            offset = op.inputs["offset"].val.astype(np.float32) if op.inputs.get("offset") is not None else 0.0
            # blockwise: a scale per block of columns (per channel: one block a row)
            repeat = [d // s for d, s in zip(data.shape, scale.shape)]
            dequantized = (data - _expand(offset, repeat)) * _expand(scale, repeat)
            found[op.name.removeprefix("p_m_").removesuffix("_to_fp16_quantized")] = dequantized
    return found


def weight_errors(compressed: dict[str, np.ndarray], trained: dict[str, np.ndarray], package: Path):
    """Relative error (||w' - w|| / ||w||) of each compressed weight against the trained tensor it
    came from, and which tensor that is. Most are named after it; the converter renames those it
    turned into a transposed matmul, which are matched to the unmatched tensor, in either
    orientation, they are closest to (and turned back into its orientation, in place)."""

    def error(w, ref):
        return float(np.linalg.norm(w - ref) / max(float(np.linalg.norm(ref)), 1e-12))

    errors, sources, renamed = {}, {}, {}
    for name, w in compressed.items():
        if name in trained and trained[name].shape == w.shape:
            errors[name], sources[name] = error(w, trained[name]), name
        else:
            renamed[name] = w
    for name, w in renamed.items():
        candidates = [
            (error(o, t), n, o) for n, t in trained.items() if n not in errors for o in (w, w.T) if o.shape == t.shape
        ]
        if not candidates:
            raise EdgetuneError(
                f"{package}: compressed weight {name} {w.shape} matches no tensor of the merged model."
            )
        e, best, oriented = min(candidates, key=lambda c: c[0])
        errors[best], sources[name], compressed[name] = e, best, np.ascontiguousarray(oriented)
    return errors, sources


def weights_kld(hf, compressed: dict[str, np.ndarray], f16: Path, data: Path, q) -> dict:
    """The merged model in PyTorch with Core ML's compressed weights put in (its fp16 activations and
    kernels left out), against f16 on the quality stage's text: what the rounding alone costs."""
    import torch

    from edgetune.core.files import read_jsonl
    from edgetune.core.prompts import plain_text
    from edgetune.runtimes import logit_kld
    from edgetune.runtimes.registry import open_variant

    params = {n.replace(".", "_"): p for n, p in hf.named_parameters()}
    with torch.no_grad():
        for name, w in compressed.items():
            params[name].copy_(torch.from_numpy(w))
    reference = open_variant(f16)
    tokens = reference.tokenize([plain_text(read_jsonl(data))], special=False)[0]

    def run(chunk):
        with torch.no_grad():
            return hf(torch.tensor([chunk])).logits[0].numpy()

    return logit_kld.compare(reference.logits(q.ctx, q.threads), run, logit_kld.chunks_of(tokens, q.ctx, q.chunks))


def _expand(a, repeat):
    if np.isscalar(a) or getattr(a, "ndim", 0) == 0:
        return a
    for axis, r in enumerate(repeat):
        a = np.repeat(a, r, axis=axis)
    return a


@click.command("verify-coreml")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The export's folder.",
)
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF checkpoint the export merged the adapter into.",
)
@click.option(
    "--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), help="The adapter the export merged."
)
@click.option(
    "--f16",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="f16 GGUF: the compressed weights' KLD.",
)
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The quality stage's text.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="What was verified (JSON)."
)
@reads("quality")
def verify_coreml(
    model: Path, base: Path, adapter: Path | None, f16: Path | None, data: Path | None, out: Path, params
):
    """What can be checked of a Core ML export without Core ML: spec, shapes, ops, weight error; with
    F16 and DATA, the KLD from f16 of the merged model run in PyTorch with the compressed weights."""
    check_outputs(inputs=[model, base, adapter, f16, data], files=[out])
    package = model / PACKAGE
    if not package.is_dir():
        raise EdgetuneError(f"{package}: not found. `edgetune export-coreml` writes it (`dvc repro` runs it).")
    spec, program = program_of(package)
    ops = collections.Counter(op.op_type for f in program.functions.values() for op in f.operations)
    hf = merged_model(base, adapter)
    trained = {n.replace(".", "_"): p.detach().numpy() for n, p in hf.named_parameters()}
    compressed = compressed_weights(program)
    errors, sources = weight_errors(compressed, trained, package)
    linear = sum(1 for n, p in trained.items() if p.ndim == 2)
    result = {
        "variant": f"{COREML}-{json.loads((model / INFO).read_text())['type']}",
        "runtime": "Core ML",
        "tested_on_device": False,
        "why": "Core ML runs only on Apple's systems; coremltools reads the package here but cannot run it",
        "spec_version": spec.specificationVersion,
        "inputs": {i.name: _shape(i) for i in spec.description.input},
        "outputs": {o.name: _shape(o) for o in spec.description.output},
        "ops": dict(ops.most_common()),
        "compressed_tensors": len(errors),
        "matrices": linear,
        "weight_error": {
            "mean": float(np.mean(list(errors.values()))) if errors else None,
            "max": max(errors.values()) if errors else None,
            "per_tensor": errors,
        },
        "model_bytes": sum(f.stat().st_size for f in shipped_files(model)),
        "files": records(shipped_files(model)),  # what the bundle ships, as verified
    }
    if f16 and data:
        result["weights_in_pytorch"] = weights_kld(
            hf, {sources[n]: w for n, w in compressed.items()}, f16, data, params.quality
        )
    write_json(out, result)
    click.echo(
        f"{result['variant']}: spec {result['spec_version']}, {len(errors)} of {linear} matrices compressed, "
        f"relative weight error mean {result['weight_error']['mean']:.4f}, max {result['weight_error']['max']:.4f}; "
        "not run (no Core ML here)"
    )


def _shape(feature) -> dict:
    array = feature.type.multiArrayType
    ranges = (
        [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges] if array.HasField("shapeRange") else []
    )
    from coremltools.proto import FeatureTypes_pb2

    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    return {"shape": list(array.shape), "ranges": ranges, "dtype": dtype}
