"""Which runtime runs a variant's files: told by the model file's format. A runtime's own library is
imported only when its variant runs (onnxruntime-genai is an optional extra)."""

from pathlib import Path

from edgetune.runtimes.base import Variant
from edgetune.runtimes.executorch.variant import ExecuTorchVariant
from edgetune.runtimes.litert.variant import LiteRTVariant
from edgetune.runtimes.llamacpp.variant import GGUFVariant
from edgetune.runtimes.onnx.variant import OnnxVariant

RUNTIMES = {
    ".gguf": GGUFVariant,
    ".onnx": OnnxVariant,
    ".pte": ExecuTorchVariant,
    ".tflite": LiteRTVariant,
}  # the model file's suffix -> its runtime's Variant
DEFAULT = GGUFVariant  # a file named otherwise is read as GGUF: its check says what the file holds


def open_variant(model: Path, adapter: Path | None = None) -> Variant:
    """The variant that runs from `model` (and `adapter`), in its runtime; not yet checked."""
    return RUNTIMES.get(Path(model).suffix.lower(), DEFAULT)(Path(model), adapter)
