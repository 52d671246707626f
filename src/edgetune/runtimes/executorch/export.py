"""Stage export-executorch: the trained model for ExecuTorch (XNNPACK), with ExecuTorch's own LLM
exporter (`python -m executorch.extension.llm.export.export_llm`).

    edgetune export-executorch --model models/base --adapter models/adapter --type 8da4w --out models/executorch/8da4w

The exporter reads Meta's checkpoint layout, so the HF checkpoint is renamed tensor by tensor
(the table below is the one in executorch/examples/models/qwen2_5/convert_weights.py) and its
config.json written as the exporter's params.json. It rounds the base at `--type` (8da4w: 8-bit
dynamic activations and 4-bit weights in 32-weight groups; the exporter's int8 refuses the LoRA
layers' biases) with 8-bit embeddings, and writes the base's weights apart from the program (foundation.ptd). The adapter
stays in fp32 inside model.pte, as LoRALinear modules beside the rounded base: nothing the training
bought is rounded to the base's few bits, as with a GGUF LoRA.

The exporter applies `target_modules` to every layer by short name, so the adapter is padded with
zeros in the layers it does not touch (lora.top_layers), and PEFT's scaling (alpha/r, or rslora's)
is folded into B so the exporter's alpha/r is 1.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.variants import EXECUTORCH_TYPES
from edgetune.runtimes.executorch import INFO, PROGRAM, TOKENIZER, WEIGHTS

MAX_SEQ = 512  # tokens one call of the program takes: a longer prompt is fed in runs

_META = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight"}
_META_LAYER = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_PEFT = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def meta_checkpoint(model: Path) -> dict:
    """The HF checkpoint's tensors under Meta's names; a tied embedding written out as the output."""
    from safetensors.torch import load_file

    files = sorted(model.glob("*.safetensors"))
    if not files:
        raise EdgetuneError(f"{model}: no *.safetensors; the exporter needs the HF checkpoint's weights.")
    meta = {}
    for f in files:
        for name, w in load_file(f).items():
            m = _HF_LAYER.fullmatch(name)
            if name == "lm_head.weight":
                meta["output.weight"] = w
            elif name in _META:
                meta[_META[name]] = w
            elif m and m[2] in _META_LAYER:
                meta[f"layers.{m[1]}.{_META_LAYER[m[2]]}.{m[3]}"] = w
            else:
                raise EdgetuneError(f"{f}: tensor {name} has no place in ExecuTorch's Llama/Qwen2 model.")
    meta.setdefault("output.weight", meta["tok_embeddings.weight"])
    return meta


def params_of(model: Path) -> dict:
    """config.json as the exporter's ModelArgs (a Qwen2: biases on q/k/v, HF's rotary layout)."""
    c = json.loads((model / "config.json").read_text())
    if c.get("model_type") not in ("qwen2", "llama"):
        raise EdgetuneError(
            f"{model}/config.json: model_type {c.get('model_type')!r}; the ExecuTorch export maps qwen2 and llama."
        )
    rope = (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0))
    return {
        "dim": c["hidden_size"],
        "hidden_dim": c["intermediate_size"],
        "n_heads": c["num_attention_heads"],
        "n_kv_heads": c.get("num_key_value_heads", c["num_attention_heads"]),
        "n_layers": c["num_hidden_layers"],
        "norm_eps": c["rms_norm_eps"],
        "rope_theta": rope,
        "vocab_size": c["vocab_size"],
        "use_hf_rope": True,
        "attention_qkv_bias": c["model_type"] == "qwen2",
        "use_scaled_rope": False,
        "ffn_dim_multiplier": 1,
    }


def padded_adapter(adapter: Path, n_layers: int) -> tuple[dict, dict]:
    """PEFT's adapter in every layer (zeros where it has none) with its scale folded into B, and the
    exporter's adapter config (short target names, alpha = r)."""
    import torch
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
    weights, shapes = load_file(adapter / "adapter_model.safetensors"), {}
    for name, w in weights.items():
        m = _PEFT.search(name)
        if not m:
            raise EdgetuneError(
                f"{adapter}: tensor {name} is not a LoRA weight of an attention or MLP projection; "
                "ExecuTorch's exporter cannot place it. Train with lora.target_modules of q/k/v/o/gate/up/down."
            )
        shapes[m.group(2, 3, 4)] = w.shape
    padded = {}
    for layer in range(n_layers):
        for (block, module, ab), shape in shapes.items():
            name = f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{ab}.weight"
            w = weights.get(name, torch.zeros(shape)).float()
            padded[name] = (w * scale if ab == "B" else w).contiguous()
    short = sorted({module for _, module, _ in shapes})
    return padded, {"r": config["r"], "lora_alpha": config["r"], "target_modules": short}


def export_config(work: Path, precision: str, model: Path, adapter: bool, context: int) -> dict:
    """export_llm's LlmConfig: XNNPACK, the KV cache (for `context` tokens) and custom SDPA, dynamic
    shapes (a call takes up to MAX_SEQ tokens), the base's weights in foundation.ptd."""
    tokenizer = json.loads((model / "config.json").read_text())
    eos = tokenizer.get("eos_token_id")
    metadata = {
        "get_bos_id": tokenizer.get("bos_token_id") or 0,
        "get_eos_ids": eos if isinstance(eos, list) else [eos],
    }
    base = {
        "model_class": "qwen2_5_0_5b",  # the Qwen2/Llama family; the sizes come from params.json
        "checkpoint": str(work / "checkpoint.pth"),
        "params": str(work / "params.json"),
        "metadata": json.dumps(metadata),
    }
    if adapter:
        base["lora_config"] = {
            "adapter_checkpoint": str(work / "adapter.safetensors"),
            "adapter_config": str(work / "adapter_config.json"),
        }
    return {
        "base": base,
        "model": {
            "use_kv_cache": True,
            "use_sdpa_with_kv_cache": True,
            "dtype_override": "fp32",
            "enable_dynamic_shape": True,
        },
        "export": {
            "max_seq_length": min(MAX_SEQ, context),
            "max_context_length": context,
            "output_name": PROGRAM,
            "foundation_weights_file": WEIGHTS,
        },
        "backend": {"xnnpack": {"enabled": True, "extended_ops": True}},
        "quantization": {"qmode": precision, "group_size": 32, "embedding_quantize": "8,0"},
    }


def run_exporter(config: dict, cwd: Path, work: Path) -> None:
    """export_llm in `cwd`, where it writes the program; its own logs (it is a hydra app) in `work`."""
    import yaml

    (cwd / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "executorch.extension.llm.export.export_llm", "--config", "config.yaml"]
    cmd += [f"hydra.run.dir={work / 'hydra'}", "hydra.output_subdir=null"]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)  # the .pte lands in the cwd
    if done.returncode or not (cwd / PROGRAM).is_file():
        log = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if "Warning" not in line)
        raise EdgetuneError(f"ExecuTorch's exporter failed:\n{log[-1500:]}")


@click.command("export-executorch")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="The HF checkpoint the adapter was trained on.",
)
@click.option(
    "--adapter",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="PEFT adapter: kept in fp32 inside model.pte, beside the rounded base.",
)
@click.option("--type", "precision", type=click.Choice(EXECUTORCH_TYPES), required=True, help="The rounding.")
@click.option(
    "--context", type=click.IntRange(16, 32768), default=2048, show_default=True, help="Tokens the KV cache holds."
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder to write.")
def export_executorch(model: Path, adapter: Path | None, precision: str, context: int, out: Path):
    """Export MODEL for ExecuTorch's XNNPACK backend at TYPE, with the ADAPTER beside the base."""
    import torch

    check_outputs(inputs=[model, adapter], folders=[out])
    params = params_of(model)
    with tempfile.TemporaryDirectory() as work_dir, atomic_dir(out) as tmp:
        work = Path(work_dir)
        checkpoint = meta_checkpoint(model)
        torch.save(checkpoint, work / "checkpoint.pth")
        (work / "params.json").write_text(json.dumps(params))
        if adapter:
            from safetensors.torch import save_file

            weights, lora_config = padded_adapter(adapter, params["n_layers"])
            save_file(weights, work / "adapter.safetensors")
            (work / "adapter_config.json").write_text(json.dumps(lora_config))
        run_exporter(export_config(work, precision, model, bool(adapter), context), tmp, work)
        (tmp / "config.yaml").unlink()
        for name in TOKENIZER:
            if (model / name).is_file():
                shutil.copy(model / name, tmp / name)
        info = {
            "type": precision,
            "max_seq": min(MAX_SEQ, context),
            "context": context,
            "n_weights": sum(w.numel() for w in checkpoint.values()),
            "dim": params["dim"],
            "n_layers": params["n_layers"],
            "n_kv_heads": params["n_kv_heads"],
            "head_dim": params["dim"] // params["n_heads"],
            "vocab_size": params["vocab_size"],
            "adapter": str(adapter) if adapter else None,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    click.echo(f"{out}: ExecuTorch XNNPACK {precision}, {size:.1f} MB" + (", with the adapter" if adapter else ""))
