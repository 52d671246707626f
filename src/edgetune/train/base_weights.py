"""The base weights training starts from.

`lora.train_on: q4_k_m` trains on the dequantized weights of the base GGUF that ships as the
`q4_k_m+lora` variant, so the adapter learns to correct that very file's rounding (QLoRA's idea,
applied to the llama.cpp quant a phone runs); `onnx-int4`, on those of ONNX Runtime GenAI's int4
base (runtimes/onnx/dequantize.py). Without it, on the HF checkpoint's weights.
`lora.quantization: 4bit` then holds them in nf4 while training (QLoRA, qlora.py).
"""

import tempfile
from pathlib import Path

from edgetune.gguf.dequantize import dequantized
from edgetune.runtimes.onnx.dequantize import dequantized as onnx_dequantized
from edgetune.train.qlora import load_4bit


def load(
    model: Path, weights: Path | None, qlora: bool, bf16: bool, device: str, gradient_checkpointing: bool, trust: bool
):
    """The base to put the adapter on: config from the checkpoint MODEL, weights from WEIGHTS (a GGUF,
    or an ONNX Runtime GenAI model.onnx) when given, in bf16 or fp32, or in nf4 for QLoRA."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    if weights is None:
        if qlora:
            return load_4bit(model, bf16, device, gradient_checkpointing, trust)
        # bf16 weights with no autocast: seven times faster than fp32 weights under bf16 autocast on
        # a CPU with AVX-512 BF16 (autocast re-casts every weight on every step). LoRA weights stay fp32.
        return AutoModelForCausalLM.from_pretrained(model, dtype=dtype, trust_remote_code=trust)
    if weights.suffix == ".onnx":
        base = onnx_dequantized(weights, model, dtype, trust)
    else:
        base = dequantized(weights, AutoConfig.from_pretrained(model, trust_remote_code=trust), dtype)
    if not qlora:
        return base
    # bitsandbytes quantizes to nf4 while loading a checkpoint: hand it the dequantized one.
    with tempfile.TemporaryDirectory(prefix=".dequantized-", dir=weights.parent) as tmp:
        base.save_pretrained(tmp, safe_serialization=True)
        del base
        return load_4bit(Path(tmp), bf16, device, gradient_checkpointing, trust)
