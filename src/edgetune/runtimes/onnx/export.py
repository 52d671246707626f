"""Stage export-onnx: the trained model for ONNX Runtime GenAI, with onnxruntime-genai's own
model builder.

    edgetune export-onnx --model models/base --adapter models/adapter --type int4 --out models/onnx/int4

The builder rounds the base to `--type` (int4: MatMulNBits with 32-weight blocks; the embedding
too, op_types_to_quantize=MatMul/Gather). With an adapter, the LoRA MatMuls are kept out of the
rounding and become graph inputs whose defaults are zero, so the folder holds the base alone
(model.onnx) and the adapter as its own file (adapter.onnx_adapter, loaded with og.Adapters), as
a GGUF LoRA is: nothing the training bought is rounded to the base's few bits. The adapter's
weights come from PEFT's file (A transposed, B scaled by alpha/r and transposed), and must equal
what the builder wrote into the graph.
"""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import umask
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.variants import ONNX_TYPES

MODEL, ADAPTER = "model.onnx", "adapter.onnx_adapter"
_PEFT_NAME = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


def lora_node(peft_name: str) -> str | None:
    """The builder's MatMul node for a PEFT LoRA tensor: ...layers.3.self_attn.q_proj.lora_A.weight
    -> /model/layers.3/attn/q_proj/lora_A/MatMul."""
    m = _PEFT_NAME.search(peft_name)
    if not m:
        return None
    layer, block, module, ab = m.groups()
    return f"/model/layers.{layer}/{'attn' if block == 'self_attn' else 'mlp'}/{module}/lora_{ab}/MatMul"


def adapter_weights(adapter: Path) -> dict[str, np.ndarray]:
    """PEFT's adapter as the builder's MatMul weights, keyed by node: A.T, and (alpha/r) B.T."""
    import json

    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]  # PEFT's scaling without rslora
    if config.get("use_rslora"):
        scale = config["lora_alpha"] / config["r"] ** 0.5
    weights = {}
    for name, w in load_file(adapter / "adapter_model.safetensors").items():
        node = lora_node(name)
        if node is None:
            raise EdgetuneError(
                f"{adapter}: tensor {name} is not a LoRA weight of an attention or MLP projection; "
                "ONNX Runtime GenAI's builder cannot place it. Train with lora.target_modules of "
                "q/k/v/o/gate/up/down projections (all-linear does)."
            )
        w = w.astype(np.float32).T
        weights[node] = np.ascontiguousarray(w * scale if node.split("/")[-2] == "lora_B" else w)
    return weights


def build(model: Path, out: Path, precision: str, adapter: Path | None, nodes: list[str]) -> None:
    """onnxruntime-genai's builder, as its command line runs it."""
    options = ["op_types_to_quantize=MatMul/Gather"]
    if adapter:
        options += [f"adapter_path={adapter}", "nodes_to_exclude=" + ",".join(nodes)]
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", model, "-o", out]
        cmd += ["-p", precision, "-e", "cpu", "-c", cache, "--extra_options", *options]
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode:
        raise EdgetuneError(f"onnxruntime-genai's builder failed on {model}:\n{(done.stdout + done.stderr)[-1500:]}")


def split_adapter(folder: Path, weights: dict[str, np.ndarray], adapter: Path) -> int:
    """Turn the graph's LoRA weights into inputs with zero defaults and write them, from PEFT's
    file, as adapter.onnx_adapter. Returns how many tensors the adapter holds."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = folder / MODEL
    graph_model = onnx.load(path)  # with its external data
    graph = graph_model.graph
    initializers = {i.name: i for i in graph.initializer}
    params = {}
    for node in graph.node:
        if node.name not in weights:
            continue
        if node.op_type != "MatMul":
            raise EdgetuneError(f"{path}: the builder rounded the LoRA node {node.name} ({node.op_type}).")
        name = node.input[1]
        built = numpy_helper.to_array(initializers[name])
        ours = weights[node.name]
        if built.shape != ours.shape or not np.allclose(built, ours, rtol=1e-3, atol=1e-6):
            raise EdgetuneError(f"{adapter}: its weight for {node.name} differs from the one the builder wrote.")
        initializers[name].CopyFrom(numpy_helper.from_array(np.zeros_like(ours), name))
        graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ours.shape))
        params[name] = ort.OrtValue.ortvalue_from_numpy(ours)
    missing = set(weights) - {n.name for n in graph.node}
    if missing:
        raise EdgetuneError(f"{path}: the builder made no node {sorted(missing)[0]} for {adapter}.")
    (folder / (MODEL + ".data")).unlink()  # onnx appends to an existing data file
    onnx.save(graph_model, path, save_as_external_data=True, location=MODEL + ".data")
    (folder / (MODEL + ".data")).chmod(0o666 & ~umask())  # onnx writes it 0600, unlike the folder's other files
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    fmt.export_adapter(str(folder / ADAPTER))
    return len(params)


@click.command("export-onnx")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF checkpoint the adapter was trained on.",
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PEFT adapter: written beside the model as adapter.onnx_adapter.",
)
@click.option("--type", "precision", type=click.Choice(ONNX_TYPES), required=True, help="The builder's precision.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
def export_onnx(model: Path, adapter: Path | None, precision: str, out: Path):
    """Build MODEL for ONNX Runtime GenAI at TYPE, with the ADAPTER as its own file."""
    check_outputs(inputs=[model, adapter], folders=[out])
    weights = adapter_weights(adapter) if adapter else {}
    with atomic_dir(out) as tmp:
        build(model, tmp, precision, adapter, sorted(weights))
        n = split_adapter(tmp, weights, adapter) if adapter else 0
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    click.echo(f"{out}: ONNX Runtime GenAI {precision}, {size:.1f} MB" + (f", adapter of {n} tensors" if n else ""))
