"""The variants' names: the one place each is spelled.

  tfidf            the classical baseline (no LLM)
  base             the untuned model
  f16              the merged model, converted
  q4_k_m           the merged model, quantized (llama.cpp's lower-case type name)
  q4_k_m-imatrix   ... with the importance matrix
  q4_k_m+lora      the base quantized once, and the adapter applied at run time
  onnx-int4+lora   another runtime (ONNX Runtime GenAI) at its own type, its adapter at run time
  executorch-8da4w+lora   ExecuTorch (XNNPACK) at its own type, its adapter in fp32 in the program
  litert-int8      LiteRT (litert-torch) with the adapter merged: its LoRA covers attention alone
  coreml-int4      Core ML with the adapter merged (no run-time LoRA): verified here, not run

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
EXECUTORCH = "executorch"
EXECUTORCH_TYPES = ("8da4w",)  # XNNPACK's: 8-bit dynamic activations, 4-bit weights (its int8 drops LoRA's biases)
LITERT = "litert"
LITERT_TYPES = ("int8", "int4")  # litert-torch's dynamic types: 8-bit per channel, 4-bit in 32-weight blocks
COREML = "coreml"
COREML_TYPES = ("int4", "int8")  # coremltools' weight compression: 4-bit in 32-weight blocks, 8-bit per channel
RUNTIMES = {  # runtimes.<key>: its types, and what they are
    ONNX: (ONNX_TYPES, "the types onnxruntime-genai's builder writes for a CPU"),
    EXECUTORCH: (EXECUTORCH_TYPES, "ExecuTorch's XNNPACK type with the adapter beside the base"),
    LITERT: (LITERT_TYPES, "litert-torch's dynamic types, the adapter merged"),
    COREML: (COREML_TYPES, "coremltools' weight compression, the adapter merged"),
}
MERGED = (LITERT, COREML)  # no run-time LoRA that holds the trained adapter: it is merged into the base


def train_on_file(model: str, train_on: str) -> str:
    """The base file the adapter trains on (lora.train_on): a quant type's base GGUF, or for onnx-<type>
    the base ONNX Runtime GenAI runs at that type (dvc.yaml's quantize-base and quantize-onnx write them)."""
    if train_on.startswith(ONNX + "-"):
        return onnx_base_file(train_on.removeprefix(ONNX + "-"))
    return f"models/gguf/{model}-base-{train_on}.gguf"


def onnx_base_file(kind: str) -> str:
    """ONNX Runtime GenAI's base alone at `kind` (dvc.yaml's export-onnx-base writes it)."""
    return f"models/onnx/{kind}-base/model.onnx"


def runtime_names(listed: dict[str, list[str]]) -> list[str]:
    """The variants of the other runtimes (runtimes.*, by runtime): each type with the adapter at run
    time, <runtime>-<type>+lora, or merged where the runtime cannot apply it, <runtime>-<type>. They
    are measured like the GGUF ones and reported beside them; each runtime's bundle is its own folder
    (deploy-<runtime>/<type>)."""
    return [f"{runtime}-{t}{'' if runtime in MERGED else LORA}" for runtime, types in listed.items() for t in types]


def runtime_of(name: str) -> tuple[str, str]:
    """executorch-8da4w+lora -> (executorch, 8da4w)."""
    runtime, _, kind = name.removesuffix(LORA).partition("-")
    return runtime, kind


def plain_twin(name: str) -> str:
    """The variant quantized without the importance matrix: q4_k_m-imatrix+lora -> q4_k_m+lora."""
    lora = name.endswith(LORA)
    return name.removesuffix(LORA).removesuffix(IMATRIX) + (LORA if lora else "")
