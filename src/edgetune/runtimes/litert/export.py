"""Stage export-litert: the trained model for LiteRT (XNNPACK on a phone's CPU), with litert-torch.

    edgetune export-litert --model models/base --adapter models/adapter --type int8 --out models/litert/int8

litert-torch's LoRA covers attention alone (q/k/v/o) and the trained adapter also touches the MLP,
so the adapter is merged into the base (PEFT's merge_and_unload, in fp32) and the merged model
converted: convert.py, in the LiteRT venv, builds it from litert-torch's decoder layers and rounds
its weights at `--type` (int8: dynamic 8-bit per channel; int4: dynamic 4-bit in 32-weight blocks).
The .tflite has one prefill signature per length in PREFILL (logits at every position) and a
decode signature; the KV cache (`--context` tokens) is passed in and out of each call.

XNNPACK refuses a 4-bit block whose scale is zero, and a base dequantized from Q4_K_M has all-zero
32-weight blocks (an embedding's unused rows are zero too): each gets one weight of NUDGE, the
smallest whose 4-bit scale (NUDGE / 7) fp16 still holds as a normal number.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.variants import LITERT_TYPES
from edgetune.runtimes.litert import BUNDLE, INFO, MODEL, TOKENIZER, convert
from edgetune.train.merge import merged_model

PREFILL = (
    16,
    32,
    64,
    128,
    256,
    512,
)  # prefill signatures' lengths: a run goes through the shortest that holds it (padding costs)
BLOCK = 32  # the int4 block along each row
NUDGE = 1e-3  # fp16's smallest normal is 6.1e-5: 7 times that, rounded up


def nudge_zero_blocks(hf) -> int:
    """Give every all-zero 32-weight block of a linear layer one weight of NUDGE; how many there were."""
    import torch

    count = 0
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features % BLOCK == 0:
                blocks = module.weight.view(module.out_features, -1, BLOCK)
                zero = (blocks == 0).all(-1)
                blocks[..., 0][zero] = NUDGE
                count += int(zero.sum())
    return count


def converter_python() -> Path:
    """The LiteRT venv's python, which runs convert.py: litert-torch needs tensorflow-cpu, kept out of
    the project venv. `make runtimes` builds .venv-litert; EDGETUNE_LITERT_PYTHON names another."""
    return Path(os.environ.get("EDGETUNE_LITERT_PYTHON", ".venv-litert/bin/python"))


def run_converter(merged: Path, out: Path, precision: str, context: int) -> None:
    python = converter_python()
    if not python.is_file():
        raise EdgetuneError(
            f"{python}: no LiteRT venv. `make runtimes` builds it (litert-torch with tensorflow-cpu), "
            "or set EDGETUNE_LITERT_PYTHON to a python that has litert-torch 0.10."
        )
    cmd = [python, convert.__file__, merged, out / MODEL, "--type", precision]
    cmd += ["--prefill", *[n for n in PREFILL if n < context], "--kv", context, "--litertlm", out / BUNDLE]
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode or not (out / MODEL).is_file():
        log = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if "Warning" not in line)
        raise EdgetuneError(f"litert-torch's converter failed:\n{log[-1500:]}")


@click.command("export-litert")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF checkpoint the adapter was trained on.",
)
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path), help="PEFT adapter: merged.")
@click.option("--type", "precision", type=click.Choice(LITERT_TYPES), required=True, help="The rounding.")
@click.option(
    "--context", type=click.IntRange(64, 32768), default=2048, show_default=True, help="Tokens the KV cache holds."
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
def export_litert(model: Path, adapter: Path | None, precision: str, context: int, out: Path):
    """Export MODEL, with ADAPTER merged, as a LiteRT .tflite (and its .litertlm) at TYPE."""
    check_outputs(inputs=[model, adapter], folders=[out])
    hf = merged_model(model, adapter)
    nudged = nudge_zero_blocks(hf) if precision == "int4" else 0
    config = hf.config
    with tempfile.TemporaryDirectory() as work_dir, atomic_dir(out) as tmp:
        merged = Path(work_dir)
        hf.save_pretrained(merged, safe_serialization=True)
        for name in TOKENIZER:
            if (model / name).is_file():
                shutil.copy(model / name, merged / name)
                shutil.copy(model / name, tmp / name)
        run_converter(merged, tmp, precision, context)
        info = {
            "type": precision,
            "prefill": [n for n in PREFILL if n < context],
            "context": context,
            "n_weights": sum(p.numel() for p in hf.parameters()),
            "n_layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
            "adapter": str(adapter) if adapter else None,
            "merged": True,
            "zero_blocks_nudged": nudged,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    size = (out / MODEL).stat().st_size / 1e6
    click.echo(f"{out}: LiteRT {precision}, {size:.1f} MB" + (", adapter merged" if adapter else ""))
