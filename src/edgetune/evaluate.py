"""Stage evaluate: one GGUF variant on the test split, through llama-cpp-python.

Label scoring: after each rendered prompt, compare the log-probabilities of the label answers
(正面 vs 负面); no free generation. Every prompt starts with the same template and instruction:
that prefix is computed once and shared, and `evaluate.batch_size` prompts decode together.
With `evaluate.calibrate`, per-label offsets fitted on the validation split correct a model
whose scores lean towards one label (scoring.fit_offsets); the raw accuracy is kept beside.

Free answer (for the variants in `evaluate.free_answer`): a greedy answer, parsed for the label
word, the way a user would ask. Label scoring is unfair to an untuned model, which starts its
answer with 这段文本… whatever it thinks; the free answer is its fair baseline.
"""

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated

import click
import numpy as np
from tqdm import tqdm

from . import params
from .errors import EdgetuneError
from .files import check_gguf, check_outputs, read_jsonl, write_json, write_predictions
from .params import Positive, Range
from .perplexity import gguf_perplexity
from .scoring import apply_offsets, classification_metrics, fit_offsets, log_softmax, parse_answer, pick_label
from .variants import Files, Variant, file_stats


@dataclasses.dataclass
class EvaluateParams:
    free_answer: list[Variant] = dataclasses.field(default_factory=lambda: ["base", "q4_k_m"])
    max_answer_tokens: Positive = 12
    batch_size: Positive = 8  # prompts decoded together
    threads: Positive | None = None  # None: all cores
    gpu_layers: Annotated[int, Range(min=-1)] = -1  # offloaded to a GPU llama.cpp was built for: -1 all, 0 none
    max_samples: Positive | None = None  # None: the whole test split
    calibrate: bool = True  # label-score offsets fitted on the validation split, applied to the test split


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
        shortest = min(map(len, prompts))
        self.prefix = prompts[0][: shortest - 1]
        for tokens in prompts:
            while tokens[: len(self.prefix)] != self.prefix:
                self.prefix = self.prefix[:-1]
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

    def close(self):
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)


def check_template(scorer: Scorer, row: dict, where: Path) -> bool:
    """Does the GGUF's own chat template render the prompt the model was trained on?"""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = scorer.llm.metadata.get("tokenizer.chat_template")
    if not template:
        click.echo(f"warning: {where} carries no chat template; users' apps will not format prompts as trained.")
        return False
    eos = scorer.llm.detokenize([scorer.llm.token_eos()], special=True).decode("utf-8", "replace")
    rendered = Jinja2ChatFormatter(template, eos_token=eos, bos_token="")(messages=row["messages"][:-1]).prompt
    if rendered != row["prompt"]:
        click.echo(f"warning: {where}: its chat template renders prompts differently from training.")
    return rendered == row["prompt"]


def score_all(scorer: Scorer, prompts, answer_tokens, answers, p: EvaluateParams, free: bool, desc: str):
    """Label scores (and free answers) for all prompts, 8 batches per call, with a progress bar."""
    scores, texts = [], []
    step = 8 * p.batch_size
    with tqdm(total=len(prompts), desc=desc, unit="sample") as bar:
        for i in range(0, len(prompts), step):
            s, t = scorer.run(prompts[i : i + step], answer_tokens, free, answers, p.max_answer_tokens)
            scores += s
            texts += t
            bar.update(len(s))
    return scores, texts


def evaluate_dialogues(
    files: Files, variant: str, rows: list[dict], threads: int, gpu_layers: int, out: Path, predictions: Path | None
):
    result = gguf_perplexity(files.gguf, rows, threads, gpu_layers, f"perplexity {variant}", files.lora)
    result.update(variant=variant, **file_stats(files))
    if predictions:  # the confusion plot has nothing to show for conversations
        write_predictions(predictions, [], [])
    write_json(out, result)
    click.echo(f"{variant}: perplexity {result['perplexity']:.3f} on {result['assistant_tokens']} reply tokens")


@click.command("evaluate")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), required=True, help="GGUF file.")
@click.option(
    "--lora", type=click.Path(dir_okay=False, path_type=Path), help="GGUF LoRA applied at run time (a +lora variant)."
)
@click.option("--variant", required=True, help="Name in the reports: base, f16, q4_k_m, q4_k_m+lora, ...")
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/processed/test.jsonl"),
    show_default=True,
)
@click.option(
    "--val",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("data/processed/val.jsonl"),
    show_default=True,
    help="Validation split: fits the label-score offsets (evaluate.calibrate).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Metrics JSON.")
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV of actual/predicted labels (dvc confusion plot).",
)
def evaluate(model: Path, lora: Path | None, variant: str, data: Path, val: Path, out: Path, predictions: Path | None):
    """Classify the test split with the GGUF MODEL, plus the LORA where given (or, for conversations, measure its
    perplexity) and write its metrics."""
    p = params.load("evaluate", EvaluateParams)
    answers = params.value("data.labels", dict[str, str])
    check_outputs(inputs=[model, lora, data, val], files=[out, predictions])
    files = Files(model, lora)
    for path in files.paths:
        check_gguf(path)
    rows = read_jsonl(data)[: p.max_samples]
    if not rows:
        raise EdgetuneError(f"{data}: no examples to evaluate.")
    val_rows = read_jsonl(val) if p.calibrate and val.is_file() and "input_ids" not in rows[0] else []
    if p.calibrate and not val_rows and "input_ids" not in rows[0]:
        raise EdgetuneError(
            f"{val}: no validation examples to calibrate on. Check data.max_val, or set "
            "evaluate.calibrate: false in params.yaml."
        )
    threads = p.threads or os.cpu_count() or 1
    if "input_ids" in rows[0]:  # conversations (data.task: sft): perplexity on the replies
        evaluate_dialogues(files, variant, rows, threads, p.gpu_layers, out, predictions)
        return

    from llama_cpp import Llama

    vocab = Llama(model_path=str(model), vocab_only=True, verbose=False)
    prompts, val_prompts = (
        [vocab.tokenize(r["prompt"].encode("utf-8"), add_bos=False, special=True) for r in rs]
        for rs in (rows, val_rows)
    )
    answer_tokens = {
        label: vocab.tokenize(w.encode("utf-8"), add_bos=False, special=False) for label, w in answers.items()
    }
    free = variant in p.free_answer
    scorer = Scorer(model, prompts + val_prompts, p.batch_size, p.max_answer_tokens, threads, p.gpu_layers, lora)
    template_ok = check_template(scorer, rows[0], model)

    start = time.perf_counter()
    scores, texts = score_all(
        scorer, prompts, answer_tokens, answers, p, free, f"evaluate {variant}" + (" (+ free answer)" if free else "")
    )
    seconds = time.perf_counter() - start - scorer.answer_seconds  # label scoring alone
    evaluated = scorer.prompt_evaluated  # test prompt tokens computed (before calibration adds more)
    offsets = dict.fromkeys(answers, 0.0)
    if val_rows:
        val_scores, _ = score_all(
            scorer, val_prompts, answer_tokens, answers, p, False, f"calibrate {variant} on {val}"
        )
        offsets = fit_offsets(val_scores, [r["label"] for r in val_rows], list(answers))
    scorer.close()

    y_true = [r["label"] for r in rows]
    y_pred = [pick_label(s) for s in apply_offsets(scores, offsets)]
    result = classification_metrics(y_true, y_pred, list(answers))
    result.pop("unparsed")
    raw = classification_metrics(y_true, [pick_label(s) for s in scores], list(answers))
    prompt_tokens = sum(map(len, prompts))
    result.update(
        variant=variant,
        label_offsets=offsets,
        uncalibrated={"accuracy": raw["accuracy"], "f1": raw["f1"]},
        seconds_per_sample=seconds / len(rows),
        samples_per_second=len(rows) / seconds,
        prompt_tokens_per_second=prompt_tokens / seconds,
        evaluated_tokens_per_second=evaluated / seconds,
        prompt_tokens=prompt_tokens,
        **file_stats(files),
        chat_template_matches=template_ok,
    )
    if free:
        parsed = [parse_answer(t, answers) for t in texts]
        fm = classification_metrics(y_true, parsed, list(answers))
        result["free_answer"] = {
            "accuracy": fm["accuracy"],
            "f1": fm["f1"],
            "unparsed": fm["unparsed"],
            "confusion_matrix": fm["confusion_matrix"],
            "seconds_per_sample": (seconds + scorer.answer_seconds) / len(rows),
            "examples": [{"label": y, "answer": a} for y, a in list(zip(y_true, texts))[:5]],
        }

    if predictions:
        write_predictions(predictions, y_true, y_pred)
    write_json(out, result)
    free_note = f", free answer {result['free_answer']['accuracy']:.3f}" if "free_answer" in result else ""
    click.echo(
        f"{variant}: accuracy {result['accuracy']:.3f}, f1 {result['f1']:.3f}{free_note}, "
        f"{result['seconds_per_sample']:.3f} s/sample"
    )
