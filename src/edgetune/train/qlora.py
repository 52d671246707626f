"""QLoRA: the base model loaded in 4 bits (nf4, double quantization) under the LoRA adapter.

Only training sees the 4-bit base: the merge stage folds the adapter into the 16-bit one.
bitsandbytes runs nf4 on CUDA and, more slowly, on the CPU; where it cannot, training stops
before it starts rather than falling back to plain LoRA.
"""

from pathlib import Path

from edgetune.core.errors import EdgetuneError


def require_bitsandbytes(device: str) -> None:
    """Quantize, multiply and backpropagate through a small nf4 matrix on `device`, or say why not."""
    import torch

    hint = (
        "Train on a CUDA GPU (see the container in the README), or set lora.quantization: none "
        "for LoRA on the 16-bit base."
    )
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import quantize_4bit
    except ImportError as e:
        raise EdgetuneError(
            f"params.yaml: lora.quantization is 4bit, which needs bitsandbytes ({e}). "
            f"`pip install bitsandbytes`, or: {hint}"
        ) from None
    try:
        weight = torch.randn(128, 64, dtype=torch.bfloat16, device=device)
        packed, state = quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        x = torch.randn(4, 64, dtype=torch.bfloat16, device=device, requires_grad=True)
        bnb.matmul_4bit(x, packed.t(), quant_state=state).sum().backward()
    except Exception as e:  # a backend without 4-bit kernels for this device raises its own types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise EdgetuneError(
            f"params.yaml: lora.quantization is 4bit, but bitsandbytes {bnb.__version__} cannot "
            f"run nf4 on {device}: {first}. {hint}"
        ) from None


def load_4bit(model: Path, bf16: bool, device: str, gradient_checkpointing: bool, trust_remote_code: bool = False):
    """The base in nf4 with double quantization, prepared for k-bit training (norms in fp32)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    require_bitsandbytes(device)
    compute = torch.bfloat16 if bf16 else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    base = AutoModelForCausalLM.from_pretrained(
        model, quantization_config=quant, dtype=compute, device_map={"": device}, trust_remote_code=trust_remote_code
    )
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
