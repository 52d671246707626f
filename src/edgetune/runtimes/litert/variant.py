"""A variant in LiteRT: the folder `edgetune export-litert` wrote, run with ai-edge-litert's
interpreter (XNNPACK on the CPU). model.tflite holds the merged model at the export's type; the
tokenizer files are the ones LiteRT-LM's bundle (model.litertlm) carries. The Variant that
runtimes/base.py describes.

The .tflite's signatures take fixed shapes: prefill_<n> a run of n tokens and their positions,
decode one token; each takes the KV cache and returns it updated with the logits. A shorter run is
padded to the next prefill length: the padding writes cache entries past the run, which the next
call (at the run's end) overwrites before any token can attend to them.
"""

import dataclasses
import json
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import records
from edgetune.runtimes import positional
from edgetune.runtimes.base import PythonRuntime
from edgetune.runtimes.litert import BUNDLE, INFO, MODEL, TOKENIZER

NEEDED = (MODEL, INFO, "tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class LiteRTVariant(PythonRuntime):
    model: Path  # the folder's model.tflite
    lora: Path | None = None  # the adapter is merged into the model
    runtime = "LiteRT (XNNPACK)"

    @property
    def info(self) -> dict:
        return json.loads((self.folder / INFO).read_text())

    @property
    def paths(self) -> list[Path]:
        return [self.folder / f for f in NEEDED] + [
            self.folder / f for f in (*TOKENIZER[2:], BUNDLE) if (self.folder / f).is_file()
        ]

    def check(self, whole: bool = True) -> None:
        if self.lora:
            raise EdgetuneError(
                f"{self.lora}: a LiteRT model holds its adapter merged (export-litert --adapter); drop --lora."
            )
        for path in [self.folder / f for f in NEEDED]:
            if not path.is_file():
                raise EdgetuneError(
                    f"{path}: not found. `edgetune export-litert` writes the folder (`dvc repro` runs it); or fix --model."
                )
        if whole:
            self.load()

    def load(self, threads: int | None = None) -> "Session":
        return Session(self, threads)

    def stats(self) -> dict:
        size = (self.folder / MODEL).stat().st_size
        return {
            "model_bytes": sum(p.stat().st_size for p in self.paths if p.name != BUNDLE),  # the bundle wraps it
            "bits_per_weight": 8 * size / self.info["n_weights"],
            "files": records(self.paths),
        }

    def label_scorer(self, prompts, batch_size: int, max_new: int, threads: int, gpu_layers: int):
        return positional.PositionalScorer(self, prompts, max_new, threads)

    def logits(self, ctx: int, threads: int | None):
        """A callable from a chunk's tokens to its logits, one row per token: the prefill signatures
        return every position's, from position 0 (a fresh context)."""
        session = self.load(threads)
        return lambda tokens: session.prefill(tokens, 0)

    def speed(self, threads: int, prompt: Path, p) -> dict:
        return positional.generation_speed(self, threads, prompt, p)

    def peak_memory(self, context: int, p) -> int:
        return positional.peak_rss(self, context, p)

    def bytes_read_per_token(self) -> dict:
        """The whole .tflite (its embedding is rounded like the other weights; one row of it is read),
        and the KV cache in f32."""
        info, details = self.info, self.load().kv
        kv = sum(a.nbytes for a in details.values()) // info["context"]
        return {"weights": (self.folder / MODEL).stat().st_size, "adapter": 0, "kv_cache_per_context_token": kv}

    def without_adapter(self) -> "LiteRTVariant":
        raise EdgetuneError(f"{self.model}: the adapter is merged into the model; export the base alone to compare.")


class Session:
    """The interpreter with its signatures and the KV cache; forward(tokens, position) -> next-token
    logits, prefill(tokens, position) -> every position's."""

    def __init__(self, variant: LiteRTVariant, threads: int | None):
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        self.np = np
        self.context, self.lengths = variant.info["context"], sorted(variant.info["prefill"])
        try:
            interpreter = Interpreter(model_path=str(variant.model), num_threads=threads)
        except (RuntimeError, ValueError) as e:
            raise EdgetuneError(
                f"{variant.model}: LiteRT cannot load it ({str(e)[:200]}); export it again (export-litert)."
            ) from None
        self.runners = {n: interpreter.get_signature_runner(f"prefill_{n}") for n in self.lengths}
        self.decode = interpreter.get_signature_runner("decode")
        inputs = self.decode.get_input_details()
        self.kv = {k: np.zeros(d["shape"], d["dtype"]) for k, d in inputs.items() if k.startswith("kv_cache")}

    def call(self, runner, tokens: list[int], position: int, length: int):
        """One signature call on `tokens` padded to `length`; the cache kept, the logits returned."""
        np = self.np
        padded = np.zeros((1, length), np.int32)
        padded[0, : len(tokens)] = tokens
        out = runner(tokens=padded, input_pos=np.arange(position, position + length, dtype=np.int32), **self.kv)
        self.kv = {k: out[k] for k in self.kv}
        return out["logits"][0, : len(tokens)]

    def prefill(self, tokens: list[int], position: int):
        """The logits at every position of `tokens`, fed from `position` in the prefill signatures (the
        shortest that holds the rest, and within the cache) or, near the cache's end, a token at a time."""
        if position + len(tokens) > self.context:
            raise EdgetuneError(
                f"a prompt of {position + len(tokens)} tokens is longer than the model's context "
                f"({self.context}); export it with a larger --context."
            )
        rows, done = [], 0
        while done < len(tokens):
            rest, at = len(tokens) - done, position + done
            fits = [n for n in self.lengths if at + n <= self.context]
            if rest == 1 or not fits:
                rows.append(self.call(self.decode, tokens[done : done + 1], at, 1))
                done += 1
                continue
            length = next((n for n in fits if n >= rest), fits[-1])
            rows.append(self.call(self.runners[length], tokens[done : done + length], at, length))
            done += min(length, rest)
        return self.np.concatenate(rows)

    def forward(self, tokens: list[int], position: int):
        return self.prefill(tokens, position)[-1]
