"""Label scoring in ExecuTorch: the prompts' shared prefix computed once at position 0, each prompt
fed after it, and each label's answer fed a token at a time after the prompt; the next prompt
starts again where the prefix ends and overwrites the cache from there."""

import time

from edgetune.core.labels import log_softmax, parse_answer
from edgetune.core.prompts import shared_prefix


class ExecuTorchScorer:
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
