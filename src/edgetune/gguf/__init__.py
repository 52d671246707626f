"""GGUF files and the pinned llama.cpp's tools: read a header, dequantize, convert a checkpoint
or an adapter, compute an importance matrix, quantize (stages convert, convert-lora, imatrix,
quantize-base, quantize). Training reads the quantized base from here, so this phase sits below
data and train."""
