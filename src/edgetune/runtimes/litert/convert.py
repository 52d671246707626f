"""An HF Qwen2/Llama checkpoint (the merged model) to a LiteRT .tflite, with litert-torch.

    .venv-litert/bin/python src/edgetune/runtimes/litert/convert.py MERGED OUT.tflite --type int8 --prefill 64 512 --kv 2048

This file runs in the LiteRT venv (`make runtimes`: litert-torch needs tensorflow-cpu, which the
project venv does not hold): it imports litert-torch and nothing of edgetune. The model is built
from config.json with litert-torch's decoder layers, its weights loaded by litert-torch's loader
under the HF names, then converted with one prefill signature per length (logits at every
position) and a decode signature, the KV cache passed in and out. With --litertlm it also wraps
that .tflite with the HF tokenizer, the chat template and the stop tokens as the .litertlm file
LiteRT-LM's engine loads on a phone.
"""

import argparse
import json
from pathlib import Path

RECIPES = {"int8": "dynamic_int8", "int4": "dynamic_int4_block32"}  # litert-torch's quantize names


def model_config(hf: dict):
    """litert-torch's ModelConfig for an HF config.json (Qwen2: q/k/v biases; Llama: none)."""
    import litert_torch.generative.layers.model_config as cfg

    rope = hf.get("rope_parameters") or {}
    heads = hf["num_attention_heads"]
    norm = cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=hf["rms_norm_eps"])
    block = cfg.TransformerBlockConfig(
        attn_config=cfg.AttentionConfig(
            num_heads=heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            num_query_groups=hf["num_key_value_heads"],
            rotary_base=int(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rotary_percentage=1.0,
            qkv_use_bias=hf["model_type"] == "qwen2",
        ),
        ff_config=cfg.FeedForwardConfig(
            type=cfg.FeedForwardType.GATED,
            activation=cfg.ActivationConfig(cfg.ActivationType.SILU),
            intermediate_size=hf["intermediate_size"],
        ),
        pre_attention_norm_config=norm,
        post_attention_norm_config=norm,
    )
    return cfg.ModelConfig(
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        max_seq_len=hf["max_position_embeddings"],
        embedding_dim=hf["hidden_size"],
        block_configs=block,
        final_norm_config=norm,
        lm_head_share_weight_with_embedding=hf.get("tie_word_embeddings", False),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("merged", type=Path, help="HF checkpoint folder (config.json, *.safetensors)")
    parser.add_argument("out", type=Path, help="the .tflite to write")
    parser.add_argument("--type", choices=RECIPES, required=True)
    parser.add_argument("--prefill", type=int, nargs="+", required=True, help="prefill signature lengths")
    parser.add_argument("--kv", type=int, required=True, help="KV cache length (the context)")
    parser.add_argument("--litertlm", type=Path, help="also write this .litertlm (LiteRT-LM's bundle)")
    args = parser.parse_args()

    import torch
    from litert_torch.generative.utilities import converter, export_config, model_builder

    config = model_config(json.loads((args.merged / "config.json").read_text()))
    names = model_builder.TENSOR_NAMES
    if not config.lm_head_share_weight_with_embedding:
        names = model_builder.TENSOR_NAMES_WITH_SEPARATE_LM_HEAD
    model = model_builder.build_decoder_only_model(
        checkpoint_path=str(args.merged),
        config=config,
        tensor_names=names,
        model_class=model_builder.DecoderOnlyModel,
        mask_cache_size=args.kv,
    )
    with torch.no_grad():
        written = converter.convert_to_tflite(
            model,
            output_path=str(args.out.parent),
            output_name_prefix=args.out.stem,
            prefill_seq_len=args.prefill,
            kv_cache_max_len=args.kv,
            quantize=RECIPES[args.type],
            export_config=export_config.ExportConfig(output_logits_on_prefill=True),
        )
    Path(written).rename(args.out)
    if args.litertlm:
        litertlm(args.out, args.merged, args.kv, args.litertlm)


def litertlm(tflite: Path, merged: Path, context: int, out: Path) -> None:
    """LiteRT-LM's bundle: the .tflite, tokenizer.json, the chat template and the stop tokens."""
    import tempfile

    from litert_torch.generative.utilities import litertlm_builder

    config = json.loads((merged / "config.json").read_text())
    template = merged / "chat_template.jinja"
    stop = config.get("eos_token_id")
    with tempfile.TemporaryDirectory() as work:
        litertlm_builder.build_litertlm(
            tflite_model_path=str(tflite),
            workdir=work,
            output_path=work,
            context_length=context,
            hf_tokenizer_model_path=str(merged / "tokenizer.json"),
            stop_token_ids=stop if isinstance(stop, list) else [stop],
            llm_model_type="qwen2p5" if config["model_type"] == "qwen2" else "generic",
            jinja_prompt_template=template.read_text() if template.is_file() else None,
        )
        Path(work, tflite.stem + ".litertlm").rename(out)


if __name__ == "__main__":
    main()
