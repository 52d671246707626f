"""Stage merge: fold the LoRA adapter into the 16-bit base -> a plain HF checkpoint.

Always into the 16-bit base, never a 4-bit one: rounding a merged 4-bit model breaks it.
"""

from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads
from edgetune.core.remote_code import allowed as trust_remote_code
from edgetune.core.weights import read_adapter


def merge_adapter(base: Path, adapter: Path, out: Path, trust: bool) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_outputs(inputs=[base, adapter], folders=[out])
    config, _ = read_adapter(adapter, base)
    wanted = config.get("base_model_name_or_path")
    trust = trust_remote_code(base, trust)  # model.trust_remote_code, checked against the checkpoint
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, trust_remote_code=trust)
    try:
        model = PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        # shape mismatches and missing modules: the adapter was trained on another model
        first = str(e).strip().splitlines()[0][:300]
        raise EdgetuneError(
            f"{adapter}: this adapter does not fit the base model in {base} (it was trained on {wanted}): {first}. "
            "Retrain it on this base (`dvc repro train`) or point --base at the model it was made for."
        ) from None
    merged = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    click.echo(f"merged {adapter} into {base} -> {out}")


def merged_model(model: Path, adapter: Path | None):
    """The HF model in fp32 with the adapter merged into its weights (PEFT's merge_and_unload), in
    memory: what the runtimes without a run-time LoRA ship (Core ML, LiteRT)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload()
    return hf.eval()


@click.command("merge")
@click.option(
    "--base",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/adapter"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("models/merged"), show_default=True
)
@reads("model.trust_remote_code")
def merge(base: Path, adapter: Path, out: Path, params):
    """Merge the LoRA ADAPTER into the 16-bit BASE checkpoint and save it to OUT."""
    merge_adapter(base, adapter, out, params.model.trust_remote_code)
