"""How fast an ExecuTorch variant runs and what it holds in memory, timed around the program's own
forward calls on the CPU (XNNPACK): prefill is one call with the whole prompt, decode one call per
token.

  speed    pp and tg tokens/s at a thread count (median over bench.repetitions)
  memory   peak resident memory of a fresh process answering one prompt (the program's KV cache is
           planned for its whole context (export --context), whatever the context asked)
  read     the bytes decoding one token reads: the program and its weights (of the embedding one
           row), and the KV cache, f32
"""

import statistics
import sys
import time
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.runtimes import base
from edgetune.runtimes.executorch import PROGRAM, WEIGHTS


def generation_speed(variant, threads: int, prompt: Path, p) -> dict:
    session = variant.load(threads)
    tokens = variant.tokenize([prompt.read_text(encoding="utf-8")], special=False)[0]
    tokens = tokens[: session.context - p.gen_tokens]
    runs = []
    for _ in range(p.repetitions):
        start = time.perf_counter()
        logits = session.forward(tokens, 0)
        middle = time.perf_counter()
        for i in range(p.gen_tokens):
            logits = session.forward([int(logits.argmax())], len(tokens) + i)
        end = time.perf_counter()
        runs.append((len(tokens) / (middle - start), p.gen_tokens / (end - middle)))
    return {
        "threads": threads,
        "prompt_tokens": len(tokens),
        "pp_tokens_per_second": statistics.median(r[0] for r in runs),
        "tg_tokens_per_second": statistics.median(r[1] for r in runs),
    }


# A fresh interpreter that loads the variant and answers one prompt: its peak RSS is the variant's.
_ANSWER = """
import sys
from pathlib import Path
from edgetune.runtimes.executorch.variant import ExecuTorchVariant
variant = ExecuTorchVariant(Path(sys.argv[1]))
session, n = variant.load(), int(sys.argv[2])
tokens = variant.tokenize(["你好"], special=False)[0]
logits = session.forward(tokens, 0)
for i in range(n):
    logits = session.forward([int(logits.argmax())], len(tokens) + i)
"""


def peak_rss(variant, context: int, p) -> int:
    if context > variant.info["context"]:
        raise EdgetuneError(
            f"{variant.model}: bench.contexts holds {context}, longer than the program's context "
            f"({variant.info['context']}); export it with a larger --context."
        )
    return base.peak_rss([sys.executable, "-c", _ANSWER, variant.model, p.gen_tokens], str(variant.model))


def bytes_read_per_token(variant) -> dict:
    info = variant.info
    total = (variant.folder / PROGRAM).stat().st_size + (variant.folder / WEIGHTS).stat().st_size
    # the 8-bit embedding (one byte a weight, a scale a row) is read one row per token
    embedding = info["vocab_size"] * info["dim"]
    return {
        "weights": int(total - embedding * (1 - 1 / info["vocab_size"])),
        "adapter": 0,  # inside the program, counted with the weights
        "kv_cache_per_context_token": 2 * info["n_layers"] * info["n_kv_heads"] * info["head_dim"] * 4,
    }
