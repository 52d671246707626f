"""The +lora variants: a quantized base with a GGUF LoRA applied by llama.cpp at run time must be
the model that was trained, i.e. PEFT's adapter on the same (dequantized) base weights."""

import shutil

import numpy as np
import pytest
from conftest import REPO, run

from edgetune.core.labels import log_softmax


def kld(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(p || q) per position, from log-probabilities."""
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


@pytest.fixture(scope="module")
def quantized_base_and_adapter(tiny_model, tiny_gguf, tmp_path_factory):
    """The tiny model's base quantized to q8_0, a random (nonzero) PEFT adapter on its dequantized
    weights, and that adapter converted to a GGUF LoRA: all through edgetune's own commands. Made
    once for the module; the tests only read it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    from edgetune.gguf.dequantize import dequantized

    workdir = tmp_path_factory.mktemp("base-and-adapter")
    shutil.copy(REPO / "params.yaml", workdir / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)  # the commands read params.yaml from the working directory
        base = workdir / "base-q8_0.gguf"
        result = run("quantize", "--model", tiny_gguf, "--type", "q8_0", "--out", base, "--stats", workdir / "q8.json")
        assert result.exit_code == 0, result.output
        torch.manual_seed(0)
        model = dequantized(base, AutoConfig.from_pretrained(tiny_model), torch.float32)
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        )
        peft_model = get_peft_model(model, lora)
        peft_model.save_pretrained(workdir / "adapter")
        result = run(
            "convert-lora", "--adapter", workdir / "adapter", "--base", tiny_model, "--out", workdir / "lora.gguf"
        )
        assert result.exit_code == 0, result.output
    return base, workdir / "lora.gguf", peft_model.eval()


def test_llama_cpp_with_the_gguf_lora_gives_pefts_next_token_distribution(quantized_base_and_adapter, qwen_tokenizer):
    import torch
    from llama_cpp import Llama

    base, lora, peft_model = quantized_base_and_adapter
    ids = qwen_tokenizer("这家酒店的服务很好，房间也很干净，下次还会再来。").input_ids
    with torch.no_grad():
        hf = log_softmax(peft_model(torch.tensor([ids])).logits[0].float().numpy())
        with peft_model.disable_adapter():
            hf_base = log_softmax(peft_model(torch.tensor([ids])).logits[0].float().numpy())

    def llama_cpp(lora_path):
        llm = Llama(model_path=str(base), lora_path=lora_path, n_ctx=64, logits_all=True, n_threads=2, verbose=False)
        llm.eval(ids)
        return log_softmax(np.asarray(llm.scores[: len(ids)]))

    with_adapter, without = llama_cpp(str(lora)), llama_cpp(None)
    # Measured: 3.7e-7 mean, 4.9e-7 max (llama.cpp's q8_0 matmuls also round the activations to 8
    # bits); the adapter itself moves the distribution by 2.3e-2, 60,000 times more. A bound 25 times
    # the measured value still catches an adapter not applied, applied twice or scaled wrong.
    same = kld(hf, with_adapter)
    print(
        f"KLD mean {same.mean():.2e} max {same.max():.2e}; adapter {kld(hf, hf_base).mean():.2e}, "
        f"not applied {kld(hf, without).mean():.2e}, base {kld(hf_base, without).mean():.2e}"
    )
    assert same.mean() < 1e-5 and same.max() < 1e-4, same
    assert kld(hf, hf_base).mean() > 1000 * same.mean()  # the adapter matters
    assert kld(hf, without).mean() > 1000 * same.mean()  # and llama.cpp applies it
    assert kld(hf_base, without).mean() < 1e-5  # the base alone agrees too


def test_chat_answers_with_the_adapter_applied(quantized_base_and_adapter, tiny_model):
    """`edgetune chat BASE --lora ADAPTER` answers as llama.cpp does with that adapter set."""
    import subprocess
    import sys

    from llama_cpp import Llama

    base, lora, _ = quantized_base_and_adapter
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetune.cli",
            "chat",
            str(base),
            "--lora",
            str(lora),
            "--temperature",
            "0",
            "--max-tokens",
            "6",
            "--threads",
            "2",
        ],
        input="你好\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = proc.stdout.split("model> ", 1)[1].split("\n", 1)[0]

    def answer(lora_path):
        llm = Llama(model_path=str(base), lora_path=lora_path, n_ctx=256, verbose=False)
        return llm.create_chat_completion(
            [{"role": "user", "content": "你好"}], temperature=0, max_tokens=6, repeat_penalty=1.1, top_p=0.9, seed=0
        )["choices"][0]["message"]["content"]

    assert reply == answer(str(lora))
    refused = subprocess.run(
        [sys.executable, "-m", "edgetune.cli", "chat", str(tiny_model), "--lora", str(lora)],
        input="",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "a GGUF LoRA runs on a GGUF model" in refused.stderr


def test_perplexity_of_a_conversation_counts_the_adapter(quantized_base_and_adapter, qwen_tokenizer):
    """Dialogue variants (data.task: sft) score reply tokens through llama-cpp-python with the
    adapter: the loss must be PEFT's on the same tokens, and not the base's."""
    import math

    import torch

    from edgetune.runtimes.llamacpp.perplexity import gguf_perplexity

    base, lora, peft_model = quantized_base_and_adapter
    rows = []
    for text in ("你好，今天心情不太好。别难过，我陪你聊聊。", "最近压力很大怎么办？先深呼吸，把事情一件件列出来。"):
        ids = qwen_tokenizer(text).input_ids
        rows.append({"input_ids": ids, "assistant_mask": [0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2)})

    def peft_loss(adapter: bool) -> float:
        nll, n = 0.0, 0
        with torch.no_grad():
            for r in rows:
                ids = torch.tensor([r["input_ids"]])
                if adapter:
                    logits = peft_model(ids).logits[0]
                else:
                    with peft_model.disable_adapter():
                        logits = peft_model(ids).logits[0]
                logp = torch.log_softmax(logits.double(), -1)[:-1]
                mask = torch.tensor(r["assistant_mask"][1:], dtype=torch.bool)
                nll -= logp[torch.arange(len(ids[0]) - 1), ids[0, 1:]][mask].sum().item()
                n += int(mask.sum())
        return nll / n

    with_adapter = gguf_perplexity(base, rows, 2, 0, "test", lora)
    without = gguf_perplexity(base, rows, 2, 0, "test")
    assert with_adapter["assistant_tokens"] == sum(sum(r["assistant_mask"][1:]) for r in rows)
    assert with_adapter["loss"] == pytest.approx(peft_loss(True), abs=1e-3)
    assert without["loss"] == pytest.approx(peft_loss(False), abs=1e-3)
    assert abs(with_adapter["loss"] - without["loss"]) > 0.01  # the adapter was applied
    assert with_adapter["perplexity"] == pytest.approx(math.exp(with_adapter["loss"]))
