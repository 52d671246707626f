"""How fast an ONNX Runtime GenAI variant runs and what it holds in memory, timed around og's own
calls on the CPU: prefill is one append_tokens of the prompt, decode is generate_next_token.

  speed    pp and tg tokens/s at a thread count (median over bench.repetitions)
  memory   peak resident memory of a fresh process answering one prompt at a context length
           (og allocates the KV cache for max_length up front: past_present_share_buffer)
  read     the bytes decoding one token reads: the weights (of the embedding one row) and the KV
           cache, f32 on the CPU
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgetune.runtimes import base


def generation_speed(variant, threads: int, prompt: Path, p) -> dict:
    session = variant.load(threads)
    tokens = np.array(variant.tokenize([prompt.read_text(encoding="utf-8")], special=False)[0], dtype=np.int32)
    runs = []
    for _ in range(p.repetitions):
        gen = session.generator(len(tokens) + p.gen_tokens + 1, min_length=len(tokens) + p.gen_tokens)
        start = time.perf_counter()
        gen.append_tokens(tokens)
        middle = time.perf_counter()
        for _ in range(p.gen_tokens):
            gen.generate_next_token()
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
from edgetune.runtimes.onnx.variant import OnnxVariant
model, lora, context, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
session = OnnxVariant(Path(model), Path(lora) if lora else None).load()
gen = session.generator(context)
gen.append_tokens(session.og.Tokenizer(session.model).encode("你好"))
for _ in range(n):
    gen.generate_next_token()
"""


def peak_rss(variant, context: int, p) -> int:
    cmd = [sys.executable, "-c", _ANSWER, variant.model, variant.lora or "", context, p.gen_tokens]
    return base.peak_rss(cmd, f"{variant.model} at context {context}")


def initializers(model: Path) -> dict[str, tuple[list[int], int]]:
    """Each weight initializer's shape and bytes in the data file; the adapter's slots (graph
    inputs with zero defaults) are not weights."""
    import onnx

    graph = onnx.load(model, load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    found = {}
    for i in graph.initializer:
        if i.name not in inputs:
            length = next((int(e.value) for e in i.external_data if e.key == "length"), len(i.raw_data))
            found[i.name] = (list(i.dims), length)
    return found


def n_weights(model: Path) -> int:
    """The weights the model multiplies by: a 4-bit tensor (name_Q4, uint8) holds two per byte."""
    total = 0
    for name, (dims, _) in initializers(model).items():
        if name.endswith(("_scales", "_zero_points")) or name in ("cos_cache", "sin_cache"):
            continue
        total += int(np.prod(dims)) * (2 if name.endswith("_Q4") else 1)
    return total


def bytes_read_per_token(variant) -> dict:
    config = json.loads((variant.folder / "genai_config.json").read_text())["model"]
    decoder = config["decoder"]
    weights = initializers(variant.model)
    total = sum(length for _, length in weights.values())
    # an embedding of its own is read one row per token; a tied one is read whole as the output layer
    embedding = sum(length for name, (_, length) in weights.items() if "embed_tokens" in name)
    kv = 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * 4  # f32
    return {
        "weights": int(total - embedding * (1 - 1 / config["vocab_size"])),
        "adapter": variant.lora.stat().st_size if variant.lora else 0,
        "kv_cache_per_context_token": kv,
    }
