"""A variant in ONNX Runtime GenAI: the folder `edgetune export-onnx` wrote (model.onnx with its
data, genai_config.json, the tokenizer), and for a +lora variant its adapter.onnx_adapter applied
at run time (og.Adapters). The Variant that runtimes/base.py describes."""

import dataclasses
import json
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import records
from edgetune.runtimes.base import PythonRuntime
from edgetune.runtimes.onnx import speed
from edgetune.runtimes.onnx.scorer import OnnxScorer

NEEDED = ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class OnnxVariant(PythonRuntime):
    model: Path  # the folder's model.onnx
    lora: Path | None = None
    runtime = "ONNX Runtime GenAI"

    @property
    def paths(self) -> list[Path]:
        shipped = [self.folder / f for f in NEEDED] + sorted(self.folder.glob("chat_template.jinja"))
        return shipped + ([self.lora] if self.lora else [])

    def check(self, whole: bool = True) -> None:
        for path in [self.folder / f for f in NEEDED] + ([self.lora] if self.lora else []):
            if not path.is_file():
                raise EdgetuneError(
                    f"{path}: not found. `edgetune export-onnx` writes the folder (`dvc repro` runs it); or fix --model."
                )
        if self.lora and whole:
            import onnxruntime as ort

            try:
                ort.AdapterFormat.read_adapter(str(self.lora))
            except Exception as e:
                raise EdgetuneError(f"{self.lora}: not an ONNX Runtime adapter file ({str(e)[:200]}).") from None

    def load(self, threads: int | None = None) -> "Session":
        return Session(self, threads)

    def stats(self) -> dict:
        shipped = sum(p.stat().st_size for p in self.paths)
        extra = self.lora.stat().st_size if self.lora else 0
        n = speed.n_weights(self.model)
        return {
            "model_bytes": shipped,
            "bits_per_weight": 8 * ((self.folder / "model.onnx.data").stat().st_size + extra) / n,
            **({"adapter_bytes": extra} if self.lora else {}),
            "files": records(self.paths),
        }

    def label_scorer(self, prompts, batch_size: int, max_new: int, threads: int, gpu_layers: int) -> OnnxScorer:
        return OnnxScorer(self, prompts, max_new, threads)

    def logits(self, ctx: int, threads: int | None):
        """A callable from a chunk's tokens to its logits (one row per token), on a fresh context."""
        import numpy as np

        session = self.load(threads)

        def run(tokens: list[int]):
            gen = session.generator(len(tokens) + 1)
            gen.append_tokens(np.array(tokens, dtype=np.int32))
            return np.array(gen.get_output("logits"))[0]

        return run

    def speed(self, threads: int, prompt: Path, p) -> dict:
        return speed.generation_speed(self, threads, prompt, p)

    def peak_memory(self, context: int, p) -> int:
        return speed.peak_rss(self, context, p)

    def bytes_read_per_token(self) -> dict:
        return speed.bytes_read_per_token(self)

    def without_adapter(self) -> "OnnxVariant":
        return OnnxVariant(self.model)


class Session:
    """A variant's og.Model with its adapter loaded once: each generator runs with it active."""

    def __init__(self, variant: OnnxVariant, threads: int | None):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(variant.folder))
        if threads:
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.adapters = None
        if variant.lora:
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(variant.lora), "lora")

    def generator(self, max_length: int, min_length: int = 0):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, min_length=min_length)
        gen = self.og.Generator(self.model, params)
        if self.adapters:
            gen.set_active_adapter(self.adapters, "lora")
        return gen
