"""llama.cpp through llama-cpp-python: a GGUF, with a GGUF LoRA applied at run time or not."""
