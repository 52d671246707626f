"""Stage export-coreml: the trained model for Core ML (iOS 18, ML Program), with coremltools.

    edgetune export-coreml --model models/base --adapter models/adapter --type int4 --out models/coreml/int4

Core ML has no run-time LoRA that coremltools writes from a PEFT adapter, so the adapter is merged
into the base (PEFT's merge_and_unload, in fp32) and the merged model exported: torch.export with
the sequence length dynamic (2..CONTEXT), the default decompositions, ct.convert to an fp16 ML
Program, then coremltools' own weight compression at `--type` (int4: symmetric 4-bit in 32-weight
blocks; int8: 8-bit per channel). The model takes input_ids and attention_mask and returns the
logits of every position; it keeps no KV cache (each call is a whole prompt).

Core ML runs only on Apple's systems: verify.py checks what can be checked of the package here.
"""

import json
import shutil
from pathlib import Path

import click

from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.variants import COREML_TYPES
from edgetune.runtimes.coreml import PACKAGE
from edgetune.train.merge import merged_model

INFO = "export.json"
CONTEXT = 512  # the longest prompt one call takes
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _register_alias() -> None:
    """torch.export leaves aten.alias in the graph; coremltools 9 has no converter for it: an identity."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    if "alias" not in _TORCH_OPS_REGISTRY:

        @register_torch_op
        def alias(context, node):
            context.add(_get_inputs(context, node, expected=1)[0], node.name)


def convert(hf, precision: str):
    import coremltools as ct
    import torch

    class Logits(torch.nn.Module):  # an explicit mask: transformers' own (torch.diff) does not convert
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    seq = torch.export.Dim("seq", min=2, max=CONTEXT)
    example = (torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long))
    with torch.no_grad():
        program = torch.export.export(Logits(hf), example, dynamic_shapes=({1: seq}, {1: seq}), strict=False)
    _register_alias()
    mlmodel = ct.convert(
        program.run_decompositions(),
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT16,
        outputs=[ct.TensorType(name="logits")],
        skip_model_load=True,  # no Core ML here to load it
    )
    cto = ct.optimize.coreml
    if precision == "int4":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32)
    else:
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    return cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op))


@click.command("export-coreml")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF checkpoint the adapter was trained on.",
)
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), help="PEFT adapter: merged.")
@click.option("--type", "precision", type=click.Choice(COREML_TYPES), required=True, help="Weight compression.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
def export_coreml(model: Path, adapter: Path | None, precision: str, out: Path):
    """Export MODEL (with ADAPTER merged) as a Core ML ML Program, its weights compressed to TYPE."""
    check_outputs(inputs=[model, adapter], folders=[out])
    hf = merged_model(model, adapter)
    mlmodel = convert(hf, precision)
    with atomic_dir(out) as tmp:
        mlmodel.save(str(tmp / PACKAGE))
        for name in TOKENIZER:
            if (model / name).is_file():
                shutil.copy(model / name, tmp / name)
        info = {"type": precision, "context": CONTEXT, "adapter": str(adapter) if adapter else None, "merged": True}
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in (out / PACKAGE).rglob("*") if f.is_file()) / 1e6
    click.echo(
        f"{out}: Core ML ML Program (iOS 18), weights {precision}, {size:.1f} MB"
        + (", adapter merged" if adapter else "")
    )
