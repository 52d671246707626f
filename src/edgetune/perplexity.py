"""Perplexity of a GGUF on held-out conversations (data.task: sft), through llama-cpp-python.

The loss counts the assistant replies only, as training did: each conversation is evaluated
once, and the log-probability of every reply token is read from the logits before it.
"""

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm


def gguf_perplexity(
    path: Path, rows: list[dict], threads: int, gpu_layers: int, desc: str, lora: Path | None = None
) -> dict:
    from llama_cpp import Llama

    longest = max(len(r["input_ids"]) for r in rows)
    n_ctx = -(-longest // 256) * 256
    llm = Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        logits_all=True,
        n_threads=threads,
        n_gpu_layers=gpu_layers,
        lora_path=str(lora) if lora else None,
        verbose=False,
    )
    nll, counted, tokens = 0.0, 0, 0
    start = time.perf_counter()
    for r in tqdm(rows, desc=desc):
        ids, mask = r["input_ids"], np.asarray(r["assistant_mask"][1:], dtype=bool)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1])[mask]  # position t predicts token t + 1
        targets = np.asarray(ids[1:])[mask]
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        logp = shifted[np.arange(len(targets)), targets] - np.log(np.exp(shifted).sum(axis=1))
        nll -= float(logp.sum())
        counted += len(targets)
        tokens += len(ids)
    seconds = time.perf_counter() - start
    loss = nll / max(counted, 1)
    return {
        "task": "sft",
        "n_samples": len(rows),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
        "assistant_tokens": counted,
        "prompt_tokens": tokens,
        "seconds_per_sample": seconds / len(rows),
        "samples_per_second": len(rows) / seconds,
        "prompt_tokens_per_second": tokens / seconds,
    }
