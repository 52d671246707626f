"""The weights an ONNX Runtime GenAI file runs, dequantized from its own model.onnx into the HF
checkpoint they came from: what the adapter trains on when `lora.train_on` names an ONNX type
(onnx-int4), as gguf/dequantize.py does for a GGUF. The builder rounds the projections
(MatMulNBits: unsigned 4 or 8-bit codes, two 4-bit codes a byte, low nibble first, a float scale
per block of 32, zero point 8 or 128 where the file has none) and the embedding
(GatherBlockQuantized), or for tied embeddings gathers from the output layer's codes; norms and
biases stay float and equal the checkpoint's. Without an adapter the builder fuses q, k and v into
one qkv_proj; its rows are the three projections', each rounded on its own, so they split exactly.
"""

import re
from pathlib import Path

import numpy as np

from edgetune.core.errors import EdgetuneError

# model.layers.3.attn.q_proj.MatMul.weight_Q4 -> model.layers.3.self_attn.q_proj.weight
_ROUNDED = re.compile(r"^(?P<module>.+?)(?:\.MatMul)?\.weight_Q(?P<bits>[48])$")
EMBEDDING = "model.embed_tokens.weight"
_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes, one per weight: [rows, blocks, block_size]."""
    if bits == 8:
        return packed.astype(np.int16)
    low, high = (packed & 0x0F).astype(np.int16), (packed >> 4).astype(np.int16)
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1)


def matmul_nbits(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int, k: int):
    """MatMulNBits' weight [N, K] (a Linear's [out, in]) from its codes, scales and zero points."""
    codes = _codes(packed, bits)
    n, blocks, _ = codes.shape
    if zero_points is None:
        zero = np.full((n, blocks), 2 ** (bits - 1), dtype=np.int16)
    elif bits == 4:  # two blocks' zero points a byte, low nibble first
        zero = _codes(zero_points.reshape(n, -1), 4).reshape(n, -1)[:, :blocks]
    else:
        zero = zero_points.reshape(n, blocks).astype(np.int16)
    weight = (codes - zero[..., None]).astype(np.float32) * scales.reshape(n, blocks, 1).astype(np.float32)
    return weight.reshape(n, -1)[:, :k]


def gather_block(data: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None) -> np.ndarray:
    """GatherBlockQuantized's table [rows, width]: signed int4 codes (zero point 0) or uint8 ones."""
    rows, width = data.shape
    blocks = scales.shape[-1]
    codes = data.astype(np.int16).reshape(rows, blocks, -1)
    zero = 0 if zero_points is None else zero_points.reshape(rows, blocks, 1).astype(np.int16)
    if zero_points is None and data.dtype == np.uint8:
        zero = 128
    weight = (codes - zero).astype(np.float32) * scales.reshape(rows, blocks, 1).astype(np.float32)
    return weight.reshape(rows, width)


def _split(name: str, weight: np.ndarray, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """A fused projection's rows back into the checkpoint's projections, in order."""
    module, _, last = name.removesuffix(".weight").rpartition(".")
    if last not in _FUSED:
        return {name: weight}
    parts = [f"{module}.{p}.weight" for p in _FUSED[last]]
    rows = np.cumsum([shapes[p][0] for p in parts if p in shapes])[:-1]
    return dict(zip(parts, np.split(weight, rows))) if len(rows) == len(parts) - 1 else {name: weight}


def rounded_weights(model: Path, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Each rounded weight of an ONNX Runtime GenAI model.onnx, dequantized, by its name in the
    checkpoint whose parameters have these `shapes`."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(model).graph  # with its external data
    tensors = {i.name: i for i in graph.initializer}

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(tensors[name]) if name and name in tensors else None

    weights, tied = {}, False
    for node in graph.node:
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        names = list(node.input) + [""] * 4
        if node.op_type == "GatherBlockQuantized" and names[0] not in tensors:
            if names[2] == "lm_head.MatMul.weight_scales":  # tied: the output layer's codes
                tied = True
                continue
            raise EdgetuneError(f"{model}: the node {node.name} gathers from {names[0]}, which is not a weight.")
        found = _ROUNDED.match(names[0] if node.op_type == "GatherBlockQuantized" else names[1])
        if not found:
            raise EdgetuneError(f"{model}: cannot tell which weight the node {node.name} rounds.")
        hf = found["module"].replace(".attn.", ".self_attn.") + ".weight"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            weight = matmul_nbits(array(names[1]), array(names[2]), array(names[3]), attrs["bits"], attrs["K"])
        else:
            weight = gather_block(array(names[0]), array(names[2]), array(names[3]))
        weights.update(_split(hf, weight, shapes))
    if tied:
        weights[EMBEDDING] = weights["lm_head.weight"]
    if not weights:
        raise EdgetuneError(f"{model}: holds no rounded weights (an fp32 build): train on the checkpoint instead.")
    return weights


def dequantized(model: Path, checkpoint: Path, dtype=None, trust: bool = False):
    """The HF model of CHECKPOINT with the weights the ONNX file MODEL rounded, as it runs them."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=trust)
    params = dict(hf.named_parameters(remove_duplicate=False))  # a tied output layer under both names
    weights = rounded_weights(model, {name: tuple(p.shape) for name, p in params.items()})
    for name, weight in weights.items():
        if name not in params or tuple(params[name].shape) != weight.shape:
            raise EdgetuneError(
                f"{model}: its weight {name} {weight.shape} is not in {checkpoint}: "
                "export-onnx built it from another checkpoint. Rebuild it from this one (`dvc repro`)."
            )
        params[name].data.copy_(torch.from_numpy(weight))
    if dtype is not None:
        for param in hf.parameters():
            param.data = param.data.to(dtype)
    return hf
