"""edgetune: fine-tune a small LLM, convert it to GGUF, quantize it, and measure every step."""

__version__ = "0.1.0"
