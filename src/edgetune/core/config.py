"""params.yaml's schema: one dataclass per section, and `Params`, the run's whole set of them.

Every value lives in conf/ (Hydra composes params.yaml from it), so a default is written once,
where a user looks for it; these classes name and check the keys and hold no values. A field's
type carries its rule (rules.py). A stage's command reads the keys it declares (params.reads)
and nothing else, and dvc.yaml lists the same keys as the stage's params.
"""

import dataclasses
from typing import Annotated

from edgetune.core.errors import EdgetuneError, shown
from edgetune.core.rules import BatchSize, Name, OneOf, Positive, ProjectPath, Range, Tokens, Variant
from edgetune.core.tasks import Task


# model: read by data.fetch_model
@dataclasses.dataclass
class ModelParams:
    name: Name
    source: str
    packages: list[str]
    sha256: str | None
    revision: str
    dtype: Annotated[str, OneOf("bfloat16", "float16", "float32")]
    trust_remote_code: bool
    chat_template: str | None  # gemma, chatml or a .jinja file: replaces the model's own


# hub: read by core.hub
@dataclasses.dataclass
class HubParams:
    timeout: Annotated[float, Range(above=0)]  # seconds a request may wait to connect or for its next byte
    retries: Annotated[int, Range(min=0)]  # tries after the first one, while the hub does not answer


# data: read by data.prepare
@dataclasses.dataclass
class DataParams:
    task: Task  # classify | sft (tasks.py)
    source: str | list[str]  # a file, a folder of published splits, a dataset id (sources.py); sft: files or globs
    max_tokens: Tokens  # sft: longer conversations are dropped, never cut mid-reply
    min_reply_chars: Annotated[int, Range(min=0)]  # sft: shorter replies (letters and digits) cannot answer
    non_answers: list[str]  # sft: regular expressions of templated replies that say nothing
    blocked_words: list[str]  # sft: a reply holding one of these drops its conversation
    revision: str  # of a hub dataset
    modelscope_id: str | None  # when it differs from the hub id
    local_dir: str | None  # the published splits on disk, tried last for a dataset id
    text_column: str
    label_column: str
    labels: dict[str, str]
    max_text_tokens: Tokens  # longer texts keep their head and tail
    head_tokens: Annotated[int, Range(min=0)]
    split: list[Annotated[float, Range(above=0)]]
    max_train: Positive | None
    max_val: Annotated[int, Range(min=0)] | None
    max_test: Positive | None
    balance: bool  # capped splits take equal numbers per class
    seed: Annotated[int, Range(min=0)]

    def __post_init__(self):
        if self.head_tokens > self.max_text_tokens:
            raise EdgetuneError(
                f"params.yaml: data.head_tokens ({self.head_tokens}) must not exceed "
                f"data.max_text_tokens ({self.max_text_tokens})."
            )
        if len(self.split) != 3:
            raise EdgetuneError(
                f"params.yaml: data.split must be three positive fractions (train, val, test), got {self.split}."
            )
        if self.task != "classify":
            return
        if len(self.labels) < 2:
            raise EdgetuneError(
                f"params.yaml: data.labels is {shown(self.labels)}; data.task: classify needs two or more labels, "
                "each mapped to the answer the model learns (negative: 负面). Or set data.task: sft for conversations."
            )
        words = {}
        for label, word in self.labels.items():
            if not word.strip():
                raise EdgetuneError(
                    f"params.yaml: data.labels.{label} is {shown(word)}; the model learns to answer that word, so it "
                    "must say something. Give the label a word."
                )
            if word in words:
                raise EdgetuneError(
                    f"params.yaml: data.labels.{words[word]} and data.labels.{label} are both {shown(word)}; the "
                    "answer would not tell them apart. Give each label a word of its own."
                )
            words[word] = label


# prompt: read by core.prompts
@dataclasses.dataclass
class PromptParams:
    # None: the chat template's default system prompt; "": an empty system turn (fewest tokens).
    system: str | None
    instruction: str


# lora: read by train.finetune
@dataclasses.dataclass
class LoraParams:
    r: Positive
    alpha: Positive
    dropout: Annotated[float, Range(min=0, below=1)]  # dropout costs a quarter of the CPU step time
    target_modules: str | list[str]
    top_layers: Positive | None  # adapters in the last N decoder layers only: backward stops there
    quantization: Annotated[str, OneOf("none", "4bit")]  # 4bit: QLoRA, the base in nf4 while training (qlora.py)
    train_on: Name  # the type whose dequantized base the adapter trains on: a quantize type, or onnx-<type>
    train_on_file: ProjectPath  # the file train_on names, spelled out in conf/ because dvc.yaml cannot compute a path


# train: read by train.finetune
@dataclasses.dataclass
class TrainParams:
    lr: Annotated[float, Range(above=0)]
    scheduler: Annotated[
        str,
        OneOf(
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
            "inverse_sqrt",
        ),
    ]
    warmup_ratio: Annotated[float, Range(min=0, max=1)]  # of the run's optimizer steps
    epochs: Annotated[float, Range(above=0), Range(max=1000)]
    max_steps: Annotated[int, Range(min=1, also=(-1,))]  # > 0 overrides epochs
    batch_size: BatchSize
    grad_accum: BatchSize
    max_length: Tokens
    group_by_length: bool  # batches of similar length waste less compute on padding
    gradient_checkpointing: bool  # saves activation memory for a third more compute
    precision: Annotated[str, OneOf("auto", "bf16", "fp32")]  # bf16 weights where the hardware has bf16
    logging_steps: Positive
    eval_steps: Positive
    save_steps: Positive  # a multiple of eval_steps when best_checkpoint is on
    best_checkpoint: bool  # keep the checkpoint with the best validation accuracy, not the last
    seed: Annotated[int, Range(min=0)]


# evaluate: read by measure.evaluate
@dataclasses.dataclass
class EvaluateParams:
    free_answer: list[Variant]
    max_answer_tokens: Positive
    batch_size: BatchSize  # prompts decoded together
    threads: Positive | None  # None: all cores
    gpu_layers: Annotated[int, Range(min=-1)]  # offloaded to a GPU llama.cpp was built for: -1 all, 0 none
    max_samples: Positive | None  # None: the whole test split
    calibrate: bool  # label-score offsets fitted on the validation split, applied to the test split


# quantize: read by core.variants
@dataclasses.dataclass
class QuantizeParams:
    types: list[Name]  # variants: quant types, <type>-imatrix
    # llama-quantize's per-tensor overrides: a real 4-bit file where k-quant blocks do not fit a width
    tensor_types: dict[str, Name]  # name pattern -> type (ffn_down: q4_0)
    output_tensor_type: Name | None
    token_embedding_type: Name | None

    def __post_init__(self):  # an empty list is for stages run by hand; the pipeline needs lora.train_on in it
        twice = sorted({t for t in self.types if self.types.count(t) > 1})
        if twice:
            raise EdgetuneError(
                f"params.yaml: quantize.types lists {', '.join(twice)} twice; each type makes one variant. "
                "Remove the repeat."
            )


# imatrix: read by gguf.imatrix
# runtimes: read by core.variants and the runtimes' export stages
@dataclasses.dataclass
class RuntimesParams:
    onnx: list[str]  # ONNX Runtime GenAI types (export-onnx --type); each makes an onnx-<type>+lora variant
    executorch: list[str]  # ExecuTorch XNNPACK types (export-executorch --type): executorch-<type>+lora
    litert: list[str]  # LiteRT types (export-litert --type): litert-<type>, the adapter merged
    coreml: list[str]  # Core ML weight types (export-coreml --type): coreml-<type>, verified, not run

    def __post_init__(self):
        from edgetune.core.variants import RUNTIMES

        for runtime, (types, what) in RUNTIMES.items():
            listed = getattr(self, runtime)
            if any(t not in types for t in listed) or len(set(listed)) < len(listed):
                raise EdgetuneError(
                    f"params.yaml: runtimes.{runtime} is {listed}; list each of {', '.join(types)} at most once "
                    f"({what}), or [] for none."
                )

    def listed(self) -> dict[str, list[str]]:
        """The types of each runtime that runs here, in the report's order (Core ML is only verified)."""
        from edgetune.core.variants import COREML, RUNTIMES

        return {runtime: getattr(self, runtime) for runtime in RUNTIMES if runtime != COREML}


@dataclasses.dataclass
class ImatrixParams:
    ctx: Annotated[int, Range(min=8)]  # tokens per chunk
    chunks: Positive  # chunks of training text read (ctx x chunks tokens)
    threads: Positive | None  # None: all cores


# quality: read by measure.kld
@dataclasses.dataclass
class QualityParams:
    ctx: Annotated[int, Range(min=8)]  # tokens per chunk; the second half of each is scored
    chunks: Positive
    threads: Positive | None


# bench: read by measure.bench
@dataclasses.dataclass
class BenchParams:
    threads: list[Positive]  # plus all cores
    prompt_tokens: Positive
    gen_tokens: Positive
    contexts: list[Positive]
    repetitions: Positive


# recommend: read by report.recommend
@dataclasses.dataclass
class RecommendParams:
    accuracy_tolerance: Annotated[float, Range(min=0, max=1)]  # accuracy lost against f16 (0.01 = one point)
    perplexity_tolerance: Annotated[float, Range(min=0)]  # conversations: relative perplexity increase allowed
    max_kld: Annotated[float, Range(min=0)]  # mean KL divergence from f16 allowed


# export: read by ship.export
@dataclasses.dataclass
class ExportParams:
    variant: Variant | None  # null: the one the report recommends
    merged: bool  # a +lora variant as the merged file of its type: for runtimes without LoRA support
    temperature: Annotated[float, Range(min=0)]
    top_p: Annotated[float, Range(above=0, max=1)]
    repetition_penalty: Annotated[float, Range(above=0)]
    context: Tokens


# phone: read by ship.phone
@dataclasses.dataclass
class PhoneParams:
    prompts: Positive  # the first N test prompts, answered by both builds
    max_answer_tokens: Positive
    ctx: Annotated[int, Range(min=8)]  # KLD: tokens per chunk, the second half of each scored
    chunks: Positive
    threads: Positive
    bandwidths: list[Annotated[float, Range(above=0)]]  # GB/s: the device table's decode ceilings


# baseline: read by measure.baseline
@dataclasses.dataclass
class BaselineParams:
    ngram_min: Positive
    ngram_max: Positive
    C: Annotated[float, Range(above=0)]  # inverse regularisation strength

    def __post_init__(self):
        if self.ngram_max < self.ngram_min:
            raise EdgetuneError(
                f"params.yaml: baseline.ngram_max ({self.ngram_max}) is below baseline.ngram_min ({self.ngram_min})."
            )


@dataclasses.dataclass(frozen=True)
class Params:
    """params.yaml, section by section, in the order conf/config.yaml composes them."""

    model: ModelParams
    data: DataParams
    hub: HubParams
    prompt: PromptParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    quantize: QuantizeParams
    runtimes: RuntimesParams
    imatrix: ImatrixParams
    quality: QualityParams
    bench: BenchParams
    recommend: RecommendParams
    phone: PhoneParams
    export: ExportParams
    baseline: BaselineParams


SCHEMA = {f.name: f.type for f in dataclasses.fields(Params)}  # section -> its dataclass
SECTIONS = tuple(SCHEMA)  # any other section is a misspelling
