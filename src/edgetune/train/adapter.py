"""The adapter: which modules LoRA trains (lora.target_modules, lora.top_layers), PEFT's config
for it, and saving it once training has finished."""

import os
import shutil
from pathlib import Path

from edgetune.core.config import LoraParams
from edgetune.core.errors import EdgetuneError


def adapter_targets(lp: LoraParams, model) -> str | list[str]:
    """PEFT's target_modules: as given, or those modules within the last `lora.top_layers` layers."""
    if lp.top_layers is None:
        return lp.target_modules
    import torch

    n_layers = model.config.get_text_config().num_hidden_layers
    if not 0 < lp.top_layers <= n_layers:
        raise EdgetuneError(
            f"params.yaml: lora.top_layers is {lp.top_layers}; the model has {n_layers} decoder "
            f"layers. Use 1..{n_layers}, or null for all."
        )
    top = {str(i) for i in range(n_layers - lp.top_layers, n_layers)}
    targets = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if "layers" not in parts[:-1] or parts[parts.index("layers") + 1] not in top:
            continue
        if (
            isinstance(module, torch.nn.Linear)
            if lp.target_modules == "all-linear"
            else parts[-1] in lp.target_modules
        ):
            targets.append(name)
    return targets


def lora_config(lp: LoraParams, model):
    """lora.* as PEFT's LoraConfig for `model`."""
    from peft import LoraConfig

    return LoraConfig(
        r=lp.r,
        lora_alpha=lp.alpha,
        lora_dropout=lp.dropout,
        target_modules=adapter_targets(lp, model),
        task_type="CAUSAL_LM",
    )


def name_adapter(model, base: Path) -> None:
    """What adapter_config.json records, the same in every checkout: the checkpoint trained on as
    the user named it (not the folder its weights were dequantized from, an absolute path that
    would reach the phone's LoRA GGUF), and the target modules in order (a set's order changes
    from one process to the next). PEFT's model card takes the name from the base model itself."""
    trained_on = model.get_base_model()
    trained_on.name_or_path = trained_on.config.name_or_path = str(base)
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(base)
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)


def save_adapter(model, out: Path) -> None:
    """The adapter lands beside its checkpoints only once training has finished."""
    tmp = out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
