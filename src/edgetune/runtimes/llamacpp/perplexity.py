"""Perplexity of a GGUF on held-out conversations (data.task: sft), through llama-cpp-python,
and its greedy replies to the first few, for a person to read beside the other variants'.

The loss counts the assistant replies only, as training did: each conversation is evaluated
once, and the log-probability of every reply token is read from the logits before it.
"""

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

EXAMPLES = 5  # held-out conversations whose last reply each variant writes, greedily


def gguf_perplexity(
    path: Path,
    rows: list[dict],
    threads: int,
    gpu_layers: int,
    desc: str,
    lora: Path | None = None,
    reply_tokens: int = 0,
) -> dict:
    """Loss and perplexity on the replies; with reply_tokens, also the greedy last reply to the
    first EXAMPLES conversations ("replies")."""
    from llama_cpp import Llama

    longest = max(len(r["input_ids"]) for r in rows) + reply_tokens
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
    replies = [greedy_reply(llm, r, reply_tokens) for r in rows[:EXAMPLES]] if reply_tokens else []
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
        "replies": replies,
    }


def greedy_reply(llm, row: dict, max_tokens: int) -> dict:
    """The conversation up to its last reply, answered greedily; beside the reference reply."""
    mask = row["assistant_mask"]
    start = len(mask) - next(i for i, m in enumerate(reversed(mask)) if not m)  # the last reply's first token
    llm.reset()
    out = llm.create_completion(row["input_ids"][:start], max_tokens=max_tokens, temperature=0.0, top_k=1)
    turns = row["messages"]
    return {"prompt": turns[-2]["content"], "reference": turns[-1]["content"], "reply": out["choices"][0]["text"]}
