"""Variants and their GGUF files: f16, a quant type (q4_k_m), or a type quantized with the
importance matrix (q4_k_m-imatrix); where each file lies, and what a GGUF really holds."""

import collections
import dataclasses
from pathlib import Path

from .errors import EdgetuneError
from .params import Name

IMATRIX = "-imatrix"


@dataclasses.dataclass
class QuantizeParams:
    types: list[Name] = dataclasses.field(default_factory=list)  # variants: quant types, <type>-imatrix


def variant_gguf(prefix: Path, variant: str) -> Path:
    """The GGUF of one variant (f16 or a quant type): PREFIX-<variant>.gguf, as dvc.yaml names them."""
    return prefix.parent / f"{prefix.name}-{variant}.gguf"


def existing_ggufs(prefix: Path, variants: list[str]) -> dict[str, Path]:
    """Each variant's GGUF, or an error naming the missing files and the stages that make them.

    A stage that reads the quantized files declares them through reports/quantize (dvc.yaml can't
    list a params-sized set of files), so `dvc exp run --pull` doesn't fetch them: say how to."""
    paths = {v: variant_gguf(prefix, v) for v in variants}
    missing = [v for v, path in paths.items() if not path.is_file()]
    if missing:
        stages = " ".join("convert" if v == "f16" else f"quantize@{v}" for v in missing)
        raise EdgetuneError(f"{', '.join(str(paths[v]) for v in missing)}: not found. `dvc pull {stages}` fetches "
                            f"them from the DVC remote; `dvc repro {stages}` builds them.")
    return paths


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
