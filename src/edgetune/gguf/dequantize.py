"""A GGUF's weights, dequantized by transformers into a plain model: the untuned base of a GGUF
source (fetch-model), and the very weights a quantized base ships with (train, lora.train_on)."""

from pathlib import Path


def dequantized(gguf: Path, config=None, dtype=None):
    """A transformers model with the dequantized weights of a GGUF (config: the checkpoint's own)."""
    import torch
    from transformers import AutoModelForCausalLM

    # Dequantizing is exact into float32; the weights are then cast to the dtype asked for.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent.resolve(), gguf_file=gguf.name, config=config, dtype=torch.float32
    )
    # The weights are plain tensors now, but the GGUF quantizer stays attached: a saved config would
    # say "quant_method: gguf" (llama.cpp's converter refuses it) and the Trainer refuses to train.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False
    if dtype is not None:
        # The weights only: buffers such as RoPE's inverse frequencies stay float32, as from_pretrained
        # keeps them and llama.cpp computes them; rounded to bf16 they would move every position.
        for param in model.parameters():
            param.data = param.data.to(dtype)
    return model
