"""Variants and their GGUF files, and what a GGUF really holds.

  f16              the merged model, converted         models/gguf/NAME-f16.gguf
  q4_k_m           the merged model, quantized         models/gguf/NAME-q4_k_m.gguf
  q4_k_m-imatrix   ... with the importance matrix      models/gguf/NAME-q4_k_m-imatrix.gguf
  q4_k_m+lora      the base quantized once, and the    models/gguf/NAME-base-q4_k_m.gguf
                   adapter applied at run time         + models/gguf/NAME-lora.gguf

dvc.yaml names the files and hands each stage its paths; the code never builds a file name.

A merged quant rounds the trained model a second time; a `+lora` variant ships the very base
weights the adapter was trained on (lora.train_on) and keeps the adapter in 16 bits.
"""

import collections
import dataclasses
from pathlib import Path

from edgetune.core.files import check_gguf, check_lora, sha256_file
from edgetune.gguf import header

IMATRIX = "-imatrix"
LORA = "+lora"


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

    @property
    def lora_flag(self) -> list:
        """The adapter as llama.cpp's tools take it."""
        return ["--lora", self.lora] if self.lora else []

    def check(self, whole: bool = True) -> None:
        """Each file a GGUF (whole: complete), or an error naming it and how to get it; the adapter,
        whole, made for this GGUF and finite (llama-cpp-python crashes on one of another model)."""
        check_gguf(self.gguf, whole)
        if self.lora:
            check_lora(self.gguf, self.lora)

    def record(self) -> list[dict]:
        """Each file's path and content hash, as evaluate records them and export checks them:
        the file shipped is the file measured."""
        return [{"path": str(p), "sha256": sha256_file(p)} for p in self.paths]

    @classmethod
    def recorded(cls, record: list[dict]) -> "Files":
        return cls(*(Path(f["path"]) for f in record))


def names(types: list[str]) -> list[str]:
    """Every GGUF variant of a run, from quantize.types: f16, each quant type merged, and each with
    the adapter at run time. The one place the variant list is made; dvc.yaml's foreach stages
    make the same list, one stage per item."""
    return ["f16", *types, *(t + LORA for t in types)]


def tensor_stats(path: Path) -> dict:
    """Tensor-type histogram and real bits per weight of a GGUF file."""
    by_type = collections.defaultdict(lambda: {"tensors": 0, "weights": 0, "bytes": 0})
    for t in header.read(path).tensors:
        entry = by_type[t.type.name.lower()]
        entry["tensors"] += 1
        entry["weights"] += t.n_elements
        entry["bytes"] += t.n_bytes
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
        "files": files.record(),
    }
