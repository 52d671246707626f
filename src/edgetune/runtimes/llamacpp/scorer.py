"""Label scoring through llama-cpp-python: a GGUF (with a GGUF LoRA applied at run time, or not)
scoring and answering several prompts per decode, the shared prompt prefix computed once."""

import time
from pathlib import Path

import numpy as np

from edgetune.core.errors import EdgetuneError
from edgetune.core.labels import log_softmax, parse_answer
from edgetune.core.prompts import shared_prefix


class Scorer:
    """A GGUF model in llama.cpp, scoring and answering several prompts per decode.

    Every prompt starts with the same template and instruction: that prefix is evaluated once
    and its KV cache shared by all sequences; each batch then decodes only the prompts' own
    tokens, `batch_size` prompts at a time, and answers greedily for them in parallel.
    """

    def __init__(
        self,
        path: Path,
        prompts: list[list[int]],
        batch_size: int,
        max_new: int,
        threads: int,
        gpu_layers: int,
        lora: Path | None = None,
    ):
        import ctypes

        import llama_cpp
        from llama_cpp import Llama

        self.lib = llama_cpp
        # the model and its tokenizer; the scoring context, sized for the batches, is made below
        self.llm = Llama(model_path=str(path), n_ctx=64, n_threads=threads, n_gpu_layers=gpu_layers, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self.prefix = shared_prefix(prompts)
        self.batch_size = batch_size
        longest = max(map(len, prompts)) - len(self.prefix) + max_new + 8
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = len(self.prefix) + batch_size * longest
        cparams.n_batch = cparams.n_ubatch = max(512, min(cparams.n_ctx, 2048))
        cparams.n_seq_max = batch_size
        cparams.kv_unified = True  # one cache: the sequences share the prefix cells
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(self.llm.model, cparams)
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
        if lora:  # the GGUF LoRA applied at run time on the quantized base, as llama-cli --lora does
            self.adapter = llama_cpp.llama_adapter_lora_init(self.llm.model, str(lora).encode())
            if not self.adapter or llama_cpp.llama_set_adapters_lora(
                self.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapter), 1, (ctypes.c_float * 1)(1.0)
            ):
                raise EdgetuneError(
                    f"{lora}: llama.cpp could not apply this LoRA to {path}: was it trained on this base?"
                )
        self.batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, 1)
        self.n_batch = cparams.n_batch
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.prompt_evaluated = 0  # prompt tokens actually computed (the shared prefix once)
        self.answer_seconds = 0.0  # time spent generating free answers
        self.decode([(t, i, 0, False) for i, t in enumerate(self.prefix)])
        self.prompt_evaluated = len(self.prefix)
        for seq in range(1, batch_size):
            llama_cpp.llama_memory_seq_cp(self.memory, 0, seq, 0, len(self.prefix))

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """Decode (token, position, sequence, wants_logits) entries; log-probs where asked."""
        out = []
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start : start + self.n_batch]
            self.batch.n_tokens = len(chunk)
            for i, (token, pos, seq, logits) in enumerate(chunk):
                self.batch.token[i], self.batch.pos[i], self.batch.logits[i] = token, pos, logits
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = seq
            if self.lib.llama_decode(self.ctx, self.batch) != 0:
                raise EdgetuneError(
                    "llama.cpp could not decode a batch: the context is too small for evaluate.batch_size."
                )
            for i, (*_, logits) in enumerate(chunk):
                if logits:
                    row = self.lib.llama_get_logits_ith(self.ctx, i)
                    out.append(log_softmax(np.ctypeslib.as_array(row, shape=(self.n_vocab,))))
        return out

    def run(
        self, prompts: list[list[int]], answers: dict[str, list[int]], free: bool, words: dict[str, str], max_new: int
    ) -> tuple[list[dict[str, float]], list[str]]:
        """Label scores (log P(answer | prompt)) and, if `free`, greedy answers for up to batch_size prompts."""
        single = all(len(a) == 1 for a in answers.values())
        # One branch per prompt when every answer is one token; else one per (prompt, label) pair.
        branches = (
            [(i, None) for i in range(len(prompts))]
            if single
            else [(i, label) for i in range(len(prompts)) for label in answers]
        )
        scores = [dict.fromkeys(answers, 0.0) for _ in prompts]
        texts = [""] * len(prompts)
        n = len(self.prefix)
        for group in range(0, len(branches), self.batch_size):
            part = branches[group : group + self.batch_size]
            entries, want = [], []
            for seq, (i, label) in enumerate(part):
                tokens = prompts[i][n:] + ([] if label is None else answers[label][:-1])
                first_scored = len(prompts[i]) - n - 1
                for k, t in enumerate(tokens):
                    entries.append((t, n + k, seq, k >= first_scored))
                want.append(len(tokens) - first_scored)
            self.prompt_evaluated += len(entries)
            logprobs = iter(self.decode(entries))
            last = {}
            for seq, (i, label) in enumerate(part):
                rows = [next(logprobs) for _ in range(want[seq])]
                if label is None:
                    scores[i] = {lab: float(rows[0][a[0]]) for lab, a in answers.items()}
                else:
                    scores[i][label] = float(sum(row[t] for row, t in zip(rows, answers[label])))
                last[seq] = rows[0]
            if free:
                start = time.perf_counter()
                self.answer(part, prompts, last, texts, words, max_new)
                self.answer_seconds += time.perf_counter() - start
            for seq in range(len(part)):
                self.lib.llama_memory_seq_rm(self.memory, seq, n, -1)
        return scores, texts

    def answer(self, part, prompts, last, texts, words, max_new):
        """Greedy answers for the sequences of a batch, one token per sequence per decode."""
        # With multi-token answers a prompt has one branch per label: the first label's branch
        # answers, after its label tokens are dropped from the cache.
        first = next(iter(words))
        active = {seq: [] for seq, (_, label) in enumerate(part) if label in (None, first)}
        pos = {seq: len(prompts[part[seq][0]]) for seq in active}
        logprobs = {seq: last[seq] for seq in active}
        for seq in active:
            self.lib.llama_memory_seq_rm(self.memory, seq, pos[seq], -1)
        for _ in range(max_new):
            step = []
            for seq in list(active):
                token = int(np.argmax(logprobs[seq]))
                if self.lib.llama_vocab_is_eog(self.vocab, token):
                    del active[seq]
                    continue
                active[seq].append(token)
                texts[part[seq][0]] = self.llm.detokenize(active[seq]).decode("utf-8", "ignore")
                if parse_answer(texts[part[seq][0]], words) is not None:
                    del active[seq]
                    continue
                step.append((token, pos[seq], seq, True))
                pos[seq] += 1
            if not step:
                break
            for (_, _, seq, _), row in zip(step, self.decode(step)):
                logprobs[seq] = row

    def renders(self, messages: list[dict]) -> str | None:
        """The prompt for `messages` in the GGUF's own chat template, as llama-cpp-python renders it."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token="")(messages=messages).prompt

    def close(self):
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
