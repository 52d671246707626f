"""Variants and their GGUF files, and what a GGUF really holds.

  f16              the merged model, converted         PREFIX-f16.gguf
  q4_k_m           the merged model, quantized         PREFIX-q4_k_m.gguf
  q4_k_m-imatrix   ... with the importance matrix      PREFIX-q4_k_m-imatrix.gguf
  q4_k_m+lora      the base quantized once, and the    PREFIX-base-q4_k_m.gguf
                   adapter applied at run time         + PREFIX-lora.gguf

A merged quant rounds the trained model a second time; a `+lora` variant ships the very base
weights the adapter was trained on (lora.train_on) and keeps the adapter in 16 bits.
"""

import collections
import dataclasses
from pathlib import Path
from typing import Annotated

from .errors import EdgetuneError
from .params import Name, Pattern

IMATRIX = "-imatrix"
LORA = "+lora"

# A variant in params (evaluate.free_answer, export.variant): a Name, or a quant type with +lora.
Variant = Annotated[
    str,
    Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]*(\+lora)?", "a variant: f16, base, a quant type, or a quant type with +lora"),
]


@dataclasses.dataclass
class QuantizeParams:
    types: list[Name] = dataclasses.field(default_factory=list)  # variants: quant types, <type>-imatrix
    # llama-quantize's per-tensor overrides: a real 4-bit file where k-quant blocks do not fit a width
    tensor_types: dict[str, Name] = dataclasses.field(default_factory=dict)  # name pattern -> type (ffn_down: q4_0)
    output_tensor_type: Name | None = None
    token_embedding_type: Name | None = None


@dataclasses.dataclass(frozen=True)
class Files:
    """What one variant runs from: a GGUF, and for a +lora variant the adapter applied on it."""

    gguf: Path
    lora: Path | None = None

    @property
    def paths(self) -> list[Path]:
        return [self.gguf] + ([self.lora] if self.lora else [])

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def names(types: list[str]) -> list[str]:
    """Every GGUF variant of a run: f16, each quant type merged, and each with the adapter at run time."""
    return ["f16", *types, *(t + LORA for t in types)]


def base_gguf(prefix: Path, quant_type: str) -> Path:
    """The base model quantized to `quant_type` (quantize-base stage): PREFIX-base-<type>.gguf."""
    return prefix.parent / f"{prefix.name}-base-{quant_type}.gguf"


def lora_gguf(prefix: Path) -> Path:
    """The adapter as a GGUF LoRA (convert-lora stage): PREFIX-lora.gguf."""
    return prefix.parent / f"{prefix.name}-lora.gguf"


def variant_files(prefix: Path, variant: str) -> Files:
    """The files of one variant, named as dvc.yaml names them."""
    if variant.endswith(LORA):
        return Files(base_gguf(prefix, variant.removesuffix(LORA)), lora_gguf(prefix))
    return Files(prefix.parent / f"{prefix.name}-{variant}.gguf")


def stage_of(prefix: Path, path: Path) -> str:
    """The dvc.yaml stage that writes one of the GGUF files above."""
    name = path.name.removeprefix(f"{prefix.name}-").removesuffix(".gguf")
    if name == "f16":
        return "convert"
    if name == "lora":
        return "convert-lora"
    return f"quantize-base@{name.removeprefix('base-')}" if name.startswith("base-") else f"quantize@{name}"


def existing_files(prefix: Path, variants: list[str]) -> dict[str, Files]:
    """Each variant's files, or an error naming the missing files and the stages that make them.

    A stage that reads the quantized files declares them through reports/quantize (dvc.yaml can't
    list a params-sized set of files), so `dvc exp run --pull` doesn't fetch them: say how to."""
    found = {v: variant_files(prefix, v) for v in variants}
    missing = list(dict.fromkeys(p for f in found.values() for p in f.paths if not p.is_file()))
    if missing:
        stages = " ".join(dict.fromkeys(stage_of(prefix, p) for p in missing))
        raise EdgetuneError(
            f"{', '.join(map(str, missing))}: not found. `dvc pull {stages}` fetches "
            f"them from the DVC remote; `dvc repro {stages}` builds them."
        )
    return found


def tensor_stats(path: Path) -> dict:
    """Tensor-type histogram and real bits per weight of a GGUF file."""
    from gguf import GGUFReader

    by_type = collections.defaultdict(lambda: {"tensors": 0, "weights": 0, "bytes": 0})
    for t in GGUFReader(path).tensors:
        entry = by_type[t.tensor_type.name.lower()]
        entry["tensors"] += 1
        entry["weights"] += int(t.n_elements)
        entry["bytes"] += int(t.n_bytes)
    weights = sum(e["weights"] for e in by_type.values())
    tensor_bytes = sum(e["bytes"] for e in by_type.values())
    return {
        "model_bytes": path.stat().st_size,
        "n_weights": weights,
        "bits_per_weight": 8 * tensor_bytes / weights,
        "tensor_types": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["weights"])),
    }


def file_stats(files: Files) -> dict:
    """Bytes and bits per weight of what a variant ships: its GGUF, plus the adapter's bytes spread
    over the base weights (the adapter adds bytes, not weights a phone multiplies by)."""
    stats = tensor_stats(files.gguf)
    extra = files.lora.stat().st_size if files.lora else 0
    return {
        "model_bytes": files.bytes,
        "bits_per_weight": stats["bits_per_weight"] + 8 * extra / stats["n_weights"],
        **({"adapter_bytes": extra} if files.lora else {}),
    }
