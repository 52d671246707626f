"""Checked readers of HF weights: a PEFT adapter (against its base) and safetensors checkpoints.

Each refuses a damaged file, weights made for another model, and values that are not finite
numbers, in one line that names the file and the fix.
"""

import json
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_text

NONFINITE_BITS = {  # a float type's exponent bits: all of them set is an infinity or a NaN
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F32": ("<u4", 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000),
}


CHUNK = 1 << 24  # values checked at a time: a large tensor never needs a second copy in memory


def count_nonfinite(raw, dtype: str) -> int:
    """NaN and infinite values among the raw bytes of a tensor of `dtype` (a safetensors or GGML type
    name), read as bit patterns (numpy has no bfloat16), a chunk at a time."""
    import numpy as np

    if dtype not in NONFINITE_BITS:  # an integer or 8-bit type: not read as weights here
        return 0
    width, exponent = NONFINITE_BITS[dtype]
    bits = raw.view(width)
    return sum(int(np.count_nonzero((bits[i : i + CHUNK] & exponent) == exponent)) for i in range(0, len(bits), CHUNK))


def not_finite(path: Path, tensor: str, count: int, total: int, fix: str) -> EdgetuneError:
    return EdgetuneError(
        f"{path}: tensor {tensor} holds {count:,} of {total:,} values that are NaN or infinite. {fix}"
    )


def read_safetensors(path: Path, fix: str, diverged: str | None = None) -> dict[str, tuple[int, ...]]:
    """The tensors of a safetensors file (name -> shape), or an error naming it: a damaged file (its
    fix: `fix`), or, where `diverged` gives the fix for it, a tensor holding NaN or infinite values."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise EdgetuneError(f"{path}: not found. {fix}")
    try:
        with safe_open(path, "numpy") as f:  # checks the header and that the tensors fill the file
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as e:
        raise EdgetuneError(f"{path}: damaged safetensors file ({e}). {fix}") from None
    if diverged:
        data = np.memmap(path, dtype=np.uint8, mode="r")
        header_size = int(data[:8].view("<u8")[0])
        header = json.loads(bytes(data[8 : 8 + header_size]))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = (8 + header_size + offset for offset in info["data_offsets"])
            count = count_nonfinite(data[begin:end], info["dtype"])
            if count:
                raise not_finite(path, name, count, max(1, int(np.prod(shapes[name]))), diverged)
    return shapes


def check_checkpoint(folder: Path) -> None:
    """An HF checkpoint's safetensors weights, undamaged and finite."""
    for path in sorted(folder.glob("*.safetensors")):
        read_safetensors(
            path,
            "Make it again (`dvc repro merge`).",
            "Merged from an adapter whose training diverged? Retrain with a lower train.lr in params.yaml (`dvc repro`).",
        )


ADAPTER_KEYS = {"peft_type": str, "r": int, "lora_alpha": (int, float)}  # what merge and convert-lora read


def read_adapter(folder: Path, base: Path | None = None) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A PEFT LoRA adapter folder: its adapter_config.json and its tensors' shapes (name -> shape),
    every value finite; with `base`, an HF checkpoint folder, every LoRA pair must fit the base
    tensor it changes. Anything else is an error naming the file and the fix."""
    retrain = "Train the adapter again (`dvc repro train`)."
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise EdgetuneError(f"{folder}: no adapter_config.json. Run the train stage first (`dvc repro train`).")
    text = read_text(path)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e.msg}, line {e.lineno})"
        raise EdgetuneError(f"{path}: {what}. {retrain}") from None
    if not isinstance(config, dict):
        raise EdgetuneError(f"{path}: holds a JSON {type(config).__name__}, not an object of PEFT settings. {retrain}")
    for key, kind in ADAPTER_KEYS.items():
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            what = f"{value!r}" if key in config else "missing"
            raise EdgetuneError(f"{path}: `{key}` is {what}; PEFT writes it for every LoRA adapter. {retrain}")
    if config["peft_type"] != "LORA":
        raise EdgetuneError(f"{path}: a {config['peft_type']} adapter; edgetune converts and merges LoRA only.")
    if not (folder / "adapter_model.safetensors").is_file():
        raise EdgetuneError(
            f"{folder}: no adapter_model.safetensors (adapters are read as safetensors only). {retrain}"
        )
    shapes = read_safetensors(
        folder / "adapter_model.safetensors",
        retrain,
        "Its training diverged: retrain with a lower train.lr in params.yaml (`dvc repro train`).",
    )
    if not any(".lora_" in name for name in shapes):
        raise EdgetuneError(f"{folder / 'adapter_model.safetensors'}: holds no LoRA tensors. {retrain}")
    if base is not None:
        _check_fits(folder, base, config, shapes)
    return config, shapes


def _check_fits(folder: Path, base: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every LoRA pair A, B of the adapter multiplies to the shape of the base tensor it is added to."""
    weights = {}
    for path in base.glob("*.safetensors"):
        weights.update(read_safetensors(path, "Fetch the base model again (`dvc repro fetch-model`)."))
    if not weights:
        return  # nothing to compare with: loading the base fails with its own message
    for name, a in shapes.items():
        # PEFT's names: base_model.model.<module>.lora_A.weight. A linear layer's A is (r, in) and B
        # (out, r), for its weight (out, in); an embedding's A is (r, rows) and B (columns, r).
        module, linear, _ = name.removeprefix("base_model.model.").rpartition(".lora_A.")
        if not linear:
            module, embedding, _ = name.removeprefix("base_model.model.").rpartition(".lora_embedding_A")
            if not embedding:
                continue
        b = shapes.get(name.replace("lora_A.", "lora_B.").replace("lora_embedding_A", "lora_embedding_B"))
        weight = weights.get(f"{module}.weight")
        if weight is None:
            problem = f"it changes {module}, which the base does not have"
        elif b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problem = f"{name} is {list(a)} and has no lora_B that it multiplies with"
        else:
            update = (b[0], a[1]) if linear else (a[1], b[0])
            if update == weight:
                continue
            problem = f"{module}.weight is {list(weight)} in the base, the adapter's update to it {list(update)}"
        raise EdgetuneError(
            f"{folder}: this adapter does not fit the base model in {base} (it was trained on "
            f"{config.get('base_model_name_or_path')}): {problem}. Retrain it on this base (`dvc repro train`) "
            "or point --base at the model it was made for."
        )
