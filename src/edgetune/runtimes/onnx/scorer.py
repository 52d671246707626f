"""Label scoring in ONNX Runtime GenAI: one generator, the prompts' shared prefix computed once,
each prompt appended after it and rewound away again (og's rewind_to keeps the prefix's cache)."""

import json
import time

import numpy as np

from edgetune.core.labels import log_softmax, parse_answer
from edgetune.core.prompts import shared_prefix


class OnnxScorer:
    def __init__(self, variant, prompts: list[list[int]], max_new: int, threads: int):
        import onnxruntime_genai as og

        session = variant.load(threads)
        self.tokenizer = og.Tokenizer(session.model)
        self.eos = set(self.tokenizer.eos_token_ids)
        self.prefix = shared_prefix(prompts)
        self.gen = session.generator(max(map(len, prompts)) + max_new + 16)
        self.answer_seconds = 0.0
        self.prompt_evaluated = 0
        self.append(self.prefix)

    def append(self, tokens: list[int]) -> np.ndarray:
        """Log-probabilities after each of `tokens`, appended to the sequence."""
        self.gen.append_tokens(np.array(tokens, dtype=np.int32))
        self.prompt_evaluated += len(tokens)
        return log_softmax(np.array(self.gen.get_output("logits"))[0, -len(tokens) :])

    def run(self, prompts, answers, free, words, max_new):
        scores, texts = [], []
        n = len(self.prefix)
        for prompt in prompts:
            last = self.append(prompt[n:])[-1]
            score = {}
            for label, tokens in answers.items():
                rows = [last] + (list(self.append(tokens[:-1])) if len(tokens) > 1 else [])
                score[label] = float(sum(row[t] for row, t in zip(rows, tokens)))
                self.gen.rewind_to(len(prompt))
            scores.append(score)
            if free:
                start = time.perf_counter()
                texts.append(self.answer(last, words, max_new))
                self.answer_seconds += time.perf_counter() - start
            else:
                texts.append("")
            self.gen.rewind_to(n)
        return scores, texts

    def answer(self, logprobs, words, max_new) -> str:
        tokens, text = [], ""
        for _ in range(max_new):
            token = int(np.argmax(logprobs))
            if token in self.eos:
                break
            tokens.append(token)
            text = self.tokenizer.decode(np.array(tokens, dtype=np.int32))
            if parse_answer(text, words) is not None:
                break
            self.gen.append_tokens(np.array([token], dtype=np.int32))
            logprobs = np.array(self.gen.get_output("logits"))[0, -1]  # argmax alone: no softmax needed
        return text

    def renders(self, messages: list[dict]) -> str | None:
        """The prompt in the folder's chat template, as ONNX Runtime GenAI's tokenizer renders it."""
        try:
            return self.tokenizer.apply_chat_template(
                json.dumps(messages, ensure_ascii=False), add_generation_prompt=True
            )
        except Exception:  # og raises a plain RuntimeError where the folder has no template
            return None

    def close(self):
        del self.gen
