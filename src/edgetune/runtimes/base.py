"""The seam between the stages that measure and ship a variant and the runtime that runs it.

evaluate, quality, bench, chat and export open a variant's files with `runtimes.registry.open_variant`
and then call only what `Variant` below names; a runtime's own library is imported by its
implementation alone (runtimes/llamacpp/ for GGUF). A second runtime fits by giving its files
these methods; what it cannot do (a LoRA applied at run time, say) it refuses with an error
naming the variant.
"""

from pathlib import Path
from typing import Iterator, Protocol

from edgetune.core.errors import EdgetuneError


class LabelScorer(Protocol):
    """A model scoring label answers after prompts, and answering them greedily."""

    prompt_evaluated: int  # prompt tokens actually computed (a shared prefix once)
    answer_seconds: float  # of the time spent, the part spent generating free answers

    def run(self, prompts: list[list[int]], answers: dict[str, list[int]], free: bool, words: dict, max_new: int):
        """(log P(answer | prompt) per label, per prompt; the greedy answers where `free`)."""

    def renders(self, messages: list[dict]) -> str | None:
        """The prompt for `messages` in the model's own chat template; None where it has none."""

    def close(self) -> None: ...


class Chat(Protocol):
    n_ctx: int

    def room(self, turns: list[dict]) -> int:
        """Tokens left in the context for a reply after `turns`."""

    def stream(self, turns: list[dict], settings: dict) -> Iterator[str]:
        """The reply to `turns`, piece by piece (settings: temperature, top_p, ...)."""


class Variant(Protocol):
    """One variant's files, opened in the runtime that runs them."""

    runtime: str  # its name in the reports
    lora: Path | None  # the adapter applied at run time, where the variant has one

    @property
    def paths(self) -> list[Path]:
        """The files it runs from: what the bundle ships, in the order the runtime loads them."""

    def check(self, whole: bool = True) -> None:
        """Each file complete and made for the others, or an error naming the file and its fix."""

    def stats(self) -> dict:
        """Its size: model_bytes, bits_per_weight (adapter_bytes), and each file's sha256 (files)."""

    def tokenize(self, texts: list[str], special: bool) -> list[list[int]]: ...

    def label_scorer(self, prompts, batch_size: int, max_new: int, threads: int, gpu_layers: int) -> LabelScorer: ...

    def perplexity(self, rows: list[dict], threads: int, gpu_layers: int, desc: str, reply_tokens: int) -> dict:
        """Loss and perplexity on conversations' replies, and greedy replies to the first few."""

    def kl_divergence(self, reference: "Variant", text: Path, ctx: int, chunks: int, threads, names) -> dict:
        """Next-token distributions on `text` against the reference's: kld_mean, kld_p99, kld_max,
        same_top_token, ppl, ppl_f16 (the reference's), ppl_ratio."""

    def logits(self, ctx: int, threads: int | None):
        """A callable from a chunk's tokens to its logits, one row per token, each chunk on a fresh
        context: runtimes/logit_kld.py compares any two runtimes with it."""

    def chat(self, n_ctx: int, threads: int | None, gpu_layers: int) -> Chat: ...

    def speed(self, threads: int, prompt: Path, p) -> dict:
        """Prefill and decode tokens/s (pp_tokens_per_second, tg_tokens_per_second) on `prompt`."""

    def bench(self, threads: int, prompt: Path, p) -> dict:
        """The runtime's own benchmark of the model alone at this thread count: pp and tg tokens/s
        (on `prompt` where the runtime has no benchmark tool of its own)."""

    def peak_memory(self, context: int, p) -> int:
        """Peak resident bytes answering one prompt at this context length."""

    def bytes_read_per_token(self) -> dict:
        """What decoding one token reads from memory: weights, adapter, KV cache per context token."""

    def without_adapter(self) -> "Variant":
        """The same base alone: what the run-time adapter costs is the difference."""


class PythonRuntime:
    """What a runtime run from Python shares (ONNX Runtime GenAI, ExecuTorch): the folder's own
    tokenizer through transformers, KLD computed from its logits (runtimes/logit_kld.py), its timed
    generation as its benchmark (neither ships a benchmark tool), and what it does not do yet. A
    subclass has `model` (a file in the folder), `runtime`, and logits and speed of its own."""

    model: Path
    runtime: str

    @property
    def folder(self) -> Path:
        return self.model.parent

    def tokenize(self, texts: list[str], special: bool) -> list[list[int]]:
        """The folder's tokenizer.json through transformers: label words are never read as special tokens."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        return [tokenizer(t, add_special_tokens=False, split_special_tokens=not special).input_ids for t in texts]

    def kl_divergence(self, reference, text: Path, ctx: int, chunks: int, threads, names) -> dict:
        from edgetune.runtimes import logit_kld

        tokens = reference.tokenize([text.read_text(encoding="utf-8")], special=False)[0]
        return logit_kld.compare(
            reference.logits(ctx, threads), self.logits(ctx, threads), logit_kld.chunks_of(tokens, ctx, chunks)
        )

    def bench(self, threads: int, prompt: Path, p) -> dict:
        return self.speed(threads, prompt, p)

    def perplexity(self, rows, threads: int, gpu_layers: int, desc: str, reply_tokens: int) -> dict:
        raise EdgetuneError(f"{self.model}: dialogue perplexity in {self.runtime} is not measured yet; use a GGUF.")

    def chat(self, n_ctx: int, threads: int | None, gpu_layers: int):
        raise EdgetuneError(f"{self.model}: `edgetune chat` runs GGUF variants; chat with this one in your app.")


def peak_rss(cmd: list, what: str) -> int:
    """Peak resident bytes of a fresh process running `cmd` (a variant loaded, one prompt answered),
    or an error naming `what` with the end of its stderr."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise EdgetuneError(f"{what} failed: {err.read().decode()[-800:]}")
    return usage.ru_maxrss * 1024  # Linux reports KiB
