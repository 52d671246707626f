"""A variant's GGUF files, checked: a complete GGUF, a GGUF LoRA that fits its base; and what a
variant runs from (Files), with its size and bits per weight.

  f16              the merged model, converted         models/gguf/NAME-f16.gguf
  q4_k_m           the merged model, quantized         models/gguf/NAME-q4_k_m.gguf
  q4_k_m+lora      the base quantized once, and the    models/gguf/NAME-base-q4_k_m.gguf
                   adapter applied at run time         + models/gguf/NAME-lora.gguf

dvc.yaml names the files and hands each stage its paths; the code never builds a file name.
"""

import collections
import dataclasses
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import records
from edgetune.core.weights import NONFINITE_BITS, count_nonfinite, not_finite
from edgetune.gguf import header


def check_gguf(path: Path, whole: bool = True) -> None:
    """A complete GGUF file, or an error naming it: a truncated copy or download, or another format,
    fails here in one line instead of deep inside llama.cpp or transformers. `whole=False` checks
    only that it is there and is a GGUF, for a stage whose llama.cpp tool reads it whole anyway."""
    if not path.is_file():
        raise EdgetuneError(
            f"{path}: GGUF file not found. `dvc pull {path}` fetches it from the DVC remote; `dvc repro` "
            "builds it. Or fix the path."
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EdgetuneError(
            f"{path}: not a GGUF file (it begins with {magic!r}, not b'GGUF'). Fetch or make it again, "
            "or fix the path."
        )
    if not whole:
        return
    size = path.stat().st_size
    try:
        end = header.read(path).end
    except ValueError as e:
        raise EdgetuneError(
            f"{path}: truncated or damaged GGUF file ({size:,} bytes; {str(e)[:200]}). Fetch or make it again."
        ) from None
    if end > size:
        raise EdgetuneError(
            f"{path}: truncated GGUF file ({size:,} bytes; its tensors need {end:,}). Fetch or make it again."
        )


def check_lora(base: Path, lora: Path) -> None:
    """A GGUF LoRA that llama.cpp can apply on the GGUF `base`, or an error naming it: each of its
    X.lora_a, X.lora_b pairs fits the base's tensor X as llama.cpp requires (one made for another
    model crashes llama-cpp-python), and every value is finite."""
    import numpy as np
    from gguf.quants import dequantize

    check_gguf(base)
    check_gguf(lora)
    model, adapter = header.read(base), header.read(lora)
    kind = adapter.fields.get("general.type"), adapter.fields.get("adapter.type")
    if kind != ("adapter", "lora"):
        raise EdgetuneError(
            f"{lora}: not a GGUF LoRA (general.type is {kind[0]!r}). Give the adapter that "
            "`edgetune convert-lora` wrote (models/gguf/<name>-lora.gguf)."
        )
    shapes = {t.name: t.shape for t in model.tensors}
    pairs = {}
    for t in adapter.tensors:
        stem, _, part = t.name.rpartition(".")
        if part in ("lora_a", "lora_b"):
            pairs.setdefault(stem, {})[part] = t.shape
    if not pairs:
        raise EdgetuneError(f"{lora}: holds no LoRA tensors. Convert the adapter again (`dvc repro convert-lora`).")
    for name, pair in sorted(pairs.items()):
        # ggml's order, the fastest dimension first: the base's X is (in, out), A is (in, r) and B (r, out);
        # the token embedding's A is stored transposed (llama.cpp's llama-adapter.cpp checks the same)
        a, b, want = pair.get("lora_a"), pair.get("lora_b"), shapes.get(name)
        if want is None:
            problem = f"it changes {name}, which the base does not have"
        elif a is None or b is None or len(a) != 2 or len(b) != 2:
            problem = f"{name} has no complete lora_a, lora_b pair"
        elif name.endswith("token_embd.weight"):
            problem = None if (b[1], a[1]) == tuple(want) and a[0] == b[0] else f"{name} is {list(want)}"
        else:
            problem = None if (a[0], b[1]) == tuple(want) and a[1] == b[0] else f"{name} is {list(want)}"
        if problem:
            raise EdgetuneError(
                f"{lora}: this LoRA does not fit the base {base}: {problem} (lora_a {list(a or ())}, lora_b "
                f"{list(b or ())}); it was made for another model. Use the base it was trained on, or convert "
                "the adapter trained on this one (`dvc repro convert-lora`)."
            )
    data = np.memmap(lora, dtype=np.uint8, mode="r")
    for t in adapter.tensors:
        raw = data[t.offset : t.offset + t.n_bytes]
        if t.type.name in NONFINITE_BITS:
            count = count_nonfinite(raw, t.type.name)
        else:  # a quantized type: its values, dequantized
            count = int(np.count_nonzero(~np.isfinite(dequantize(raw, t.type))))
        if count:
            raise not_finite(
                lora,
                t.name,
                count,
                t.n_elements,
                "The adapter it came from diverged in training: retrain with a lower train.lr in params.yaml (`dvc repro`).",
            )


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

    @classmethod
    def recorded(cls, record: list[dict]) -> "Files":
        return cls(*(Path(f["path"]) for f in record))


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
        "files": records(files.paths),
    }
