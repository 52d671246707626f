"""KL divergence of a variant's next-token distributions against a reference's, computed in Python
from the logits each runtime returns: the one computation that puts every runtime on the same
scale. It follows llama-perplexity's (--kl-divergence): the text in chunks of `ctx` tokens, each
chunk on a fresh context, and only the second half of each chunk scored, so every scored token
has at least ctx/2 tokens before it. On a GGUF the two agree (tests/unit/runtimes).
"""

import numpy as np

from edgetune.core.errors import EdgetuneError
from edgetune.core.labels import log_softmax


def chunks_of(tokens: list[int], ctx: int, chunks: int) -> list[list[int]]:
    n = min(chunks, len(tokens) // ctx)
    if n == 0:
        raise EdgetuneError(f"the held-out text has {len(tokens)} tokens, fewer than quality.ctx ({ctx}).")
    return [tokens[i * ctx : (i + 1) * ctx] for i in range(n)]


def compare(reference, variant, chunks: list[list[int]]) -> dict:
    """kld_mean, kld_p99, kld_max, same_top_token, ppl, ppl_f16, ppl_ratio of `variant` against
    `reference`: each a callable from a chunk's tokens to its logits, one row per token."""
    klds, same, nll, nll_ref = [], [], [], []
    for tokens in chunks:
        first = len(tokens) // 2
        p, q = log_softmax(reference(tokens)[first:-1]), log_softmax(variant(tokens)[first:-1])
        target = np.array(tokens[first + 1 :])
        klds.append((np.exp(p) * (p - q)).sum(axis=-1))
        same.append(p.argmax(axis=-1) == q.argmax(axis=-1))
        rows = np.arange(len(target))
        nll.append(-q[rows, target])
        nll_ref.append(-p[rows, target])
    kld, nll, nll_ref = np.concatenate(klds), np.concatenate(nll), np.concatenate(nll_ref)
    ppl, ppl_ref = float(np.exp(nll.mean())), float(np.exp(nll_ref.mean()))
    return {
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.percentile(kld, 99)),
        "kld_max": float(kld.max()),
        "same_top_token": float(np.concatenate(same).mean()),
        "ppl": ppl,
        "ppl_f16": ppl_ref,
        "ppl_ratio": ppl / ppl_ref,
        "scored_tokens": int(len(kld)),
        "computed_by": "python",
    }
