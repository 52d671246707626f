"""The variants' names: the one place each is spelled.

  tfidf            the classical baseline (no LLM)
  base             the untuned model
  f16              the merged model, converted
  q4_k_m           the merged model, quantized (llama.cpp's lower-case type name)
  q4_k_m-imatrix   ... with the importance matrix
  q4_k_m+lora      the base quantized once, and the adapter applied at run time
  onnx-int4+lora   another runtime (ONNX Runtime GenAI) at its own type, its adapter at run time

A merged quant rounds the trained model a second time; a `+lora` variant ships the very base
weights the adapter was trained on (lora.train_on) and keeps the adapter in 16 bits.
"""

TFIDF = "tfidf"
BASE = "base"
F16 = "f16"  # the reference every other variant is measured against
IMATRIX = "-imatrix"
LORA = "+lora"
NOT_SHIPPED = (BASE, TFIDF)  # measured for comparison; never a phone file
ORDER = [TFIDF, BASE, F16]  # the report's first rows; then the quant variants, largest first


def names(types: list[str]) -> list[str]:
    """Every GGUF variant of a run, from quantize.types: f16, each quant type merged, and each with
    the adapter at run time. The one place the variant list is made; dvc.yaml's foreach stages
    make the same list, one stage per item."""
    return [F16, *types, *(t + LORA for t in types)]


ONNX = "onnx"
ONNX_TYPES = ("int4", "int8", "fp32")  # what onnxruntime-genai's builder writes for a CPU


def train_on_file(model: str, train_on: str) -> str:
    """The base file the adapter trains on (lora.train_on): a quant type's base GGUF, or for onnx-<type>
    the base ONNX Runtime GenAI runs at that type (dvc.yaml's quantize-base and quantize-onnx write them)."""
    if train_on.startswith(ONNX + "-"):
        return f"models/onnx/{train_on.removeprefix(ONNX + '-')}-base/model.onnx"
    return f"models/gguf/{model}-base-{train_on}.gguf"


def runtime_names(onnx: list[str]) -> list[str]:
    """The variants of the other runtimes (runtimes.*): each type with the adapter at run time.
    They are measured like the GGUF ones and reported beside them; the bundle stays a GGUF."""
    return [f"{ONNX}-{t}{LORA}" for t in onnx]


def plain_twin(name: str) -> str:
    """The variant quantized without the importance matrix: q4_k_m-imatrix+lora -> q4_k_m+lora."""
    lora = name.endswith(LORA)
    return name.removesuffix(LORA).removesuffix(IMATRIX) + (LORA if lora else "")
