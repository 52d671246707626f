"""edgetune: fine-tune a small LLM, convert it to GGUF, quantize it, and measure every step."""

from edgetune.gguf.llamacpp import bind_library

__version__ = "0.1.0"
# The phases, lowest first: a module imports from its own phase or one before it, never a later one.
PHASES = ("core", "gguf", "data", "train", "runtimes", "measure", "report", "ship")

bind_library()  # before anything imports llama_cpp
