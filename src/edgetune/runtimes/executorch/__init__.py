"""ExecuTorch (XNNPACK): export.py writes a folder, variant.py runs it (runtimes/positional.py); the
folder's files, which both read:"""

PROGRAM = "model.pte"  # the program, with the adapter in fp32
WEIGHTS = "foundation.ptd"  # the base's weights at the export's type, outside the program
INFO = "export.json"  # what the export was: type, context, sizes
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")  # what the app's runner reads
