"""A GGUF variant in llama.cpp: the Variant that runtimes/base.py describes, for a GGUF, and for
a +lora variant the GGUF LoRA applied on it at run time."""

import dataclasses
from pathlib import Path

from edgetune.gguf.files import Files, file_stats
from edgetune.runtimes.llamacpp import kld, speed
from edgetune.runtimes.llamacpp.chat import GGUFChat
from edgetune.runtimes.llamacpp.perplexity import gguf_perplexity
from edgetune.runtimes.llamacpp.scorer import Scorer


@dataclasses.dataclass(frozen=True)
class GGUFVariant(Files):
    runtime = "llama.cpp"

    def stats(self) -> dict:
        return file_stats(self)

    def tokenizer(self):
        """A tokenizer alone (llama-cpp-python's vocab-only model): `.tokenize(bytes, ...)`."""
        from llama_cpp import Llama

        return Llama(model_path=str(self.gguf), vocab_only=True, verbose=False)

    def tokenize(self, texts: list[str], special: bool) -> list[list[int]]:
        vocab = self.tokenizer()
        return [vocab.tokenize(t.encode("utf-8"), add_bos=False, special=special) for t in texts]

    def label_scorer(self, prompts, batch_size: int, max_new: int, threads: int, gpu_layers: int) -> Scorer:
        return Scorer(self.gguf, prompts, batch_size, max_new, threads, gpu_layers, self.lora)

    def perplexity(self, rows, threads: int, gpu_layers: int, desc: str, reply_tokens: int) -> dict:
        return gguf_perplexity(self.gguf, rows, threads, gpu_layers, desc, self.lora, reply_tokens)

    def kl_divergence(self, reference: "GGUFVariant", text: Path, ctx: int, chunks: int, threads, names) -> dict:
        return kld.kl_divergence(reference, self, text, ctx, chunks, threads, names)[0]

    def logits(self, ctx: int, threads: int | None):
        """A callable from a chunk's tokens to its logits (one row per token), on a fresh context:
        what runtimes/logit_kld.py compares across runtimes."""
        import numpy as np
        from llama_cpp import Llama

        llm = Llama(
            model_path=str(self.gguf),
            lora_path=self.lora and str(self.lora),
            n_ctx=ctx,
            logits_all=True,
            n_threads=threads,
            n_gpu_layers=0,
            verbose=False,
        )

        def run(tokens: list[int]):
            llm.reset()
            llm.eval(tokens)
            return np.array(llm.scores[: len(tokens)])

        return run

    def chat(self, n_ctx: int, threads: int | None, gpu_layers: int) -> GGUFChat:
        return GGUFChat(self.gguf, n_ctx, threads, gpu_layers, self.lora)

    def speed(self, threads: int, prompt: Path, p) -> dict:
        return speed.completion_speed(self, threads, prompt, p)

    def bench(self, threads: int, prompt: Path, p) -> dict:
        """llama-bench, which takes no adapter and makes its own prompt of p.prompt_tokens: of the GGUF alone."""
        return speed.speed(self.gguf, threads, p)

    def peak_memory(self, context: int, p) -> int:
        return speed.peak_rss(self, context, p)

    def bytes_read_per_token(self) -> dict:
        return speed.bytes_read_per_token(self)

    def without_adapter(self) -> "GGUFVariant":
        return GGUFVariant(self.gguf)
