"""Every architecture among the presets that transformers builds offline (qwen2, llama, gemma3):
a tiny random model with a real tokenizer goes merge -> convert -> quantize, and the GGUF loads
in llama-cpp-python with its architecture and chat template, and produces logits."""

import copy
import json

import numpy as np
import pytest
from conftest import committed, make_tiny_model, run

from edgetune.data.fetch_model import supply_template
from edgetune.gguf.llamacpp import convert_checkpoint
from edgetune.train.merge import merge_adapter

ARCHS = {"qwen2": "qwen_tokenizer", "llama": "qwen_tokenizer", "gemma3": "gemma_tokenizer"}


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_merges_converts_quantizes_and_loads(arch, request, tmp_path):
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tokenizer = copy.deepcopy(request.getfixturevalue(ARCHS[arch]))
    if arch == "gemma3":  # the registry's Gemma-3-270M carries no template: as its preset does
        supply_template(tokenizer, committed("model", chat_template="gemma"))
    base = make_tiny_model(tokenizer, tmp_path / "base", arch=arch)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(tmp_path / "adapter")

    merge_adapter(base, tmp_path / "adapter", tmp_path / "merged", trust=False)
    convert_checkpoint(tmp_path / "merged", tmp_path / "f16.gguf", "f16")
    result = run(
        "quantize",
        "--model",
        tmp_path / "f16.gguf",
        "--type",
        "q4_k_m",
        "--out",
        tmp_path / "q4.gguf",
        "--stats",
        tmp_path / "q4.json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "q4.json").read_text())["bits_per_weight"] > 4

    llm = Llama(model_path=str(tmp_path / "q4.gguf"), n_ctx=128, logits_all=True, verbose=False)
    assert llm.metadata["general.architecture"] == arch
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True
    )
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert tokens == tokenizer(prompt, add_special_tokens=False).input_ids  # the same tokens as in training
    llm.eval(tokens)
    logits = np.asarray(llm.scores[len(tokens) - 1])
    assert np.isfinite(logits).all() and logits.std() > 0
