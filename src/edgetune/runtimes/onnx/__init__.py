"""ONNX Runtime GenAI: the builders ONNX model, its LoRA as a separate .onnx_adapter."""
