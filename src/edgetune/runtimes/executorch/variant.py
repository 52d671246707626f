"""A variant in ExecuTorch: the folder `edgetune export-executorch` wrote. model.pte holds the program
and the adapter (fp32), foundation.ptd the base rounded to the export's type; the tokenizer files
are what the app's runner reads. The Variant that runtimes/base.py describes.

The program's forward takes a run of tokens and the position of the first, keeps the KV cache in
its own buffers, and returns the next-token logits after the last token: positions are how a
prefix is kept and an answer rewound (a later call at an earlier position overwrites the cache).
"""

import dataclasses
import json
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import records
from edgetune.runtimes import positional
from edgetune.runtimes.base import PythonRuntime
from edgetune.runtimes.executorch import INFO, PROGRAM, TOKENIZER, WEIGHTS

NEEDED = (PROGRAM, WEIGHTS, INFO, "tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class ExecuTorchVariant(PythonRuntime):
    model: Path  # the folder's model.pte
    lora: Path | None = None  # the adapter is inside model.pte, bound to it: no file of its own
    runtime = "ExecuTorch (XNNPACK)"

    @property
    def info(self) -> dict:
        return json.loads((self.folder / INFO).read_text())

    @property
    def paths(self) -> list[Path]:
        return [self.folder / f for f in NEEDED] + [
            self.folder / f for f in TOKENIZER[2:] if (self.folder / f).is_file()
        ]

    def check(self, whole: bool = True) -> None:
        if self.lora:
            raise EdgetuneError(
                f"{self.lora}: an ExecuTorch program holds its adapter (export-executorch --adapter); drop --lora."
            )
        for path in [self.folder / f for f in NEEDED]:
            if not path.is_file():
                raise EdgetuneError(
                    f"{path}: not found. `edgetune export-executorch` writes the folder (`dvc repro` runs it); or fix --model."
                )
        if whole:
            self.load()  # the program verifies itself against its data file

    def load(self, threads: int | None = None) -> "Session":
        return Session(self, threads)

    def stats(self) -> dict:
        program, weights = (self.folder / PROGRAM).stat().st_size, (self.folder / WEIGHTS).stat().st_size
        info = self.info
        return {
            "model_bytes": sum(p.stat().st_size for p in self.paths),
            "bits_per_weight": 8 * (program + weights) / info["n_weights"],
            **({"adapter_bytes": program} if info["adapter"] else {}),  # the program with the adapter in it
            "files": records(self.paths),
        }

    def label_scorer(self, prompts, batch_size: int, max_new: int, threads: int, gpu_layers: int):
        return positional.PositionalScorer(self, prompts, max_new, threads)

    def logits(self, ctx: int, threads: int | None):
        """A callable from a chunk's tokens to its logits, one row per token: the program returns the
        last position's, so the chunk is fed a token at a time from position 0 (a fresh context)."""
        import numpy as np

        session = self.load(threads)
        return lambda tokens: np.stack([session.forward([t], i) for i, t in enumerate(tokens)])

    def speed(self, threads: int, prompt: Path, p) -> dict:
        return positional.generation_speed(self, threads, prompt, p)

    def peak_memory(self, context: int, p) -> int:
        return positional.peak_rss(self, context, p)

    def bytes_read_per_token(self) -> dict:
        """The program and its weights (of the 8-bit embedding, one byte a weight and a scale a row,
        one row), and the KV cache in f32."""
        info = self.info
        total = (self.folder / PROGRAM).stat().st_size + (self.folder / WEIGHTS).stat().st_size
        embedding = info["vocab_size"] * info["dim"]
        return {
            "weights": int(total - embedding * (1 - 1 / info["vocab_size"])),
            "adapter": 0,  # inside the program, counted with the weights
            "kv_cache_per_context_token": 2 * info["n_layers"] * info["n_kv_heads"] * info["head_dim"] * 4,
        }

    def without_adapter(self) -> "ExecuTorchVariant":
        raise EdgetuneError(
            f"{self.model}: the adapter is compiled into the program; export the base alone to compare."
        )


class Session:
    """The program loaded with its data file; forward(tokens, position) -> next-token logits."""

    def __init__(self, variant: ExecuTorchVariant, threads: int | None):
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers llama::custom_sdpa
        import executorch.kernels.quantized  # noqa: F401  the quantized embedding's kernels
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        if threads and portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads: one pool per process
        self.torch = torch
        self.max_seq, self.context = variant.info["max_seq"], variant.info["context"]
        try:
            program = Runtime.get().load_program(variant.model, data_path=variant.folder / WEIGHTS)
            self.method = program.load_method("forward")
        except RuntimeError as e:
            raise EdgetuneError(
                f"{variant.model}: ExecuTorch cannot load it with {WEIGHTS} ({str(e)[:200]}); "
                "the two are written together by export-executorch: export them again."
            ) from None

    def forward(self, tokens: list[int], position: int):
        """The logits after `tokens`, fed from `position` in runs of at most max_seq."""
        if position + len(tokens) > self.context:
            raise EdgetuneError(
                f"a prompt of {position + len(tokens)} tokens is longer than the program's context "
                f"({self.context}); export it with a larger --context."
            )
        t = self.torch
        for start in range(0, len(tokens), self.max_seq):
            run = tokens[start : start + self.max_seq]
            out = self.method.execute([t.tensor([run], dtype=t.long), t.tensor([position + start], dtype=t.long)])
        return out[0][0].numpy()
