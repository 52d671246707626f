"""edgetune: fine-tune a small LLM, convert it to GGUF, quantize it, and measure every step."""

from .llamacpp import bind_library

__version__ = "0.1.0"

bind_library()  # before anything imports llama_cpp
