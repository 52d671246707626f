"""What a runtime that keeps the KV cache itself and takes the position of each call shares
(ExecuTorch, LiteRT): its variant's `load(threads)` gives a session whose `forward(tokens, position)`
returns the next-token logits after `tokens` (a later call at an earlier position overwrites the
cache from there) and whose `context` is the tokens its cache holds.

  PositionalScorer  label scoring: the prompts' shared prefix computed once at position 0, each
                    prompt fed after it, each label's answer a token at a time after the prompt
  generation_speed  pp and tg tokens/s at a thread count (median over bench.repetitions): prefill
                    one call with the whole prompt, decode one call per token
  peak_rss          peak resident memory of a fresh process answering one prompt (the cache is
                    planned for the export's whole context, whatever the context asked)
"""

import statistics
import sys
import time
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.labels import log_softmax, parse_answer
from edgetune.core.prompts import shared_prefix
from edgetune.runtimes import base


class PositionalScorer:
    def __init__(self, variant, prompts: list[list[int]], max_new: int, threads: int):
        from transformers import AutoTokenizer

        self.session = variant.load(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(variant.folder)
        self.eos = {self.tokenizer.eos_token_id}
        self.prefix = shared_prefix(prompts)
        self.answer_seconds = 0.0
        self.prompt_evaluated = 0
        self.after_prefix = self.feed(self.prefix, 0) if self.prefix else None

    def feed(self, tokens: list[int], position: int):
        """Log-probabilities of the next token after `tokens`, fed from `position`."""
        self.prompt_evaluated += len(tokens)
        return log_softmax(self.session.forward(tokens, position))

    def run(self, prompts, answers, free, words, max_new):
        scores, texts = [], []
        n = len(self.prefix)
        for prompt in prompts:
            last = self.feed(prompt[n:], n) if len(prompt) > n else self.after_prefix
            score = {}
            for label, tokens in answers.items():
                total, row = 0.0, last
                for i, t in enumerate(tokens):
                    total += float(row[t])
                    if i + 1 < len(tokens):
                        row = self.feed([t], len(prompt) + i)
                score[label] = total
            scores.append(score)
            if free:
                start = time.perf_counter()
                texts.append(self.answer(last, len(prompt), words, max_new))
                self.answer_seconds += time.perf_counter() - start
            else:
                texts.append("")
        return scores, texts

    def answer(self, logprobs, position: int, words, max_new) -> str:
        tokens, text = [], ""
        for i in range(max_new):
            token = int(logprobs.argmax())
            if token in self.eos:
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens)
            if parse_answer(text, words) is not None:
                break
            logprobs = self.session.forward([token], position + i)  # argmax alone: no softmax needed
        return text

    def renders(self, messages: list[dict]) -> str | None:
        """The prompt in the folder's chat template, as the app's tokenizer renders it."""
        if not self.tokenizer.chat_template:
            return None
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def close(self):
        del self.session


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
import importlib, sys
from pathlib import Path
module, name = sys.argv[1].rsplit(".", 1)
variant = getattr(importlib.import_module(module), name)(Path(sys.argv[2]))
session, n = variant.load(), int(sys.argv[3])
tokens = variant.tokenize(["你好"], special=False)[0]
logits = session.forward(tokens, 0)
for i in range(n):
    logits = session.forward([int(logits.argmax())], len(tokens) + i)
"""


def peak_rss(variant, context: int, p) -> int:
    if context > variant.info["context"]:
        raise EdgetuneError(
            f"{variant.model}: bench.contexts holds {context}, longer than the export's context "
            f"({variant.info['context']}); export it with a larger --context."
        )
    kind = f"{type(variant).__module__}.{type(variant).__qualname__}"
    return base.peak_rss([sys.executable, "-c", _ANSWER, kind, variant.model, p.gen_tokens], str(variant.model))
