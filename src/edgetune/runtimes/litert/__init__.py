"""LiteRT (the TFLite runtime, XNNPACK on the CPU): export.py writes a folder (convert.py runs in the
LiteRT venv), variant.py runs it with ai-edge-litert's interpreter (runtimes/positional.py); the
folder's files, which they read:"""

MODEL = "model.tflite"  # prefill_<n> and decode signatures, the KV cache passed in and out
BUNDLE = "model.litertlm"  # the same .tflite with tokenizer and chat template, for LiteRT-LM
INFO = "export.json"  # what the export was: type, prefill lengths, KV length, sizes
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
