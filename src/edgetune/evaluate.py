"""Stage evaluate: one GGUF variant on the test split, through llama-cpp-python.

Label scoring: after each rendered prompt, compare the log-probabilities of the label answers
(正面 vs 负面); no free generation. Every prompt starts with the same template and instruction,
so the KV cache of the longest shared prefix is kept and only the rest is evaluated.

Free answer (for the variants in `evaluate.free_answer`): a greedy answer, parsed for the label
word, the way a user would ask. Label scoring is unfair to an untuned model, which starts its
answer with 这段文本… whatever it thinks; the free answer is its fair baseline.
"""

import dataclasses
import os
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from . import params
from .errors import EdgetuneError
from .files import atomic_path, read_jsonl, write_json
from .prepare import DataParams
from .quantize import tensor_stats
from .scoring import classification_metrics, log_softmax, parse_answer, pick_label


@dataclasses.dataclass
class EvaluateParams:
    free_answer: list[str] = dataclasses.field(default_factory=lambda: ["base", "q4_k_m"])
    max_answer_tokens: int = 12
    threads: int | None = None  # None: all cores
    max_samples: int | None = None  # None: the whole test split


class Scorer:
    """A GGUF model held in llama-cpp-python, with the KV cache of the last prompt kept."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
            logits_all=False, verbose=False,
        )
        self.evaluated = 0  # prompt tokens actually computed (after prefix reuse)

    def tokens(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def next_logprobs(self, tokens: list[int]) -> np.ndarray:
        """Log-probabilities of the token after `tokens`, reusing the cached common prefix."""
        import llama_cpp

        cached = self.llm.input_ids[: self.llm.n_tokens]
        n = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            n += 1
        n = min(n, len(tokens) - 1)  # the last token must be evaluated to get its logits
        self.llm.n_tokens = n
        self.llm.eval(tokens[n:])
        self.evaluated += len(tokens) - n
        logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return log_softmax(np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).copy())

    def score(self, prompt: list[int], answers: dict[str, list[int]]) -> dict[str, float]:
        """log P(answer | prompt) for each label, summed over the answer's tokens."""
        scores = {}
        for label, answer in answers.items():
            total = 0.0
            for i, tok in enumerate(answer):
                total += float(self.next_logprobs(prompt + answer[:i])[tok])
            scores[label] = total
        return scores

    def answer(self, prompt: list[int], words: dict[str, str], max_tokens: int) -> str:
        """Greedy free answer; stops at end of turn, or as soon as a label word appears."""
        text = ""
        for chunk in self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
            text += chunk["choices"][0]["text"]
            if parse_answer(text, words) is not None:
                break
        return text


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


@click.command("evaluate")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), required=True, help="GGUF file.")
@click.option("--variant", required=True, help="Name in the reports: base, f16, q4_k_m, ...")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=Path("data/processed/test.jsonl"), show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Metrics JSON.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path), help="CSV of actual/predicted labels (dvc confusion plot).")
def evaluate(model: Path, variant: str, data: Path, out: Path, predictions: Path | None):
    """Classify the test split with the GGUF MODEL and write its metrics."""
    p = params.load("evaluate", EvaluateParams)
    answers = params.load("data", DataParams).labels
    if not model.is_file():
        raise EdgetuneError(f"{model}: GGUF file not found. Run the stage that makes it (`dvc repro`).")
    rows = read_jsonl(data)[: p.max_samples]
    if not rows:
        raise EdgetuneError(f"{data}: no examples to evaluate.")
    threads = p.threads or os.cpu_count() or 1

    probe = Scorer(model, n_ctx=64, threads=threads)
    prompts = [probe.tokens(r["prompt"]) for r in rows]
    answer_tokens = {label: probe.tokens(word, special=False) for label, word in answers.items()}
    del probe
    n_ctx = max(map(len, prompts)) + max(p.max_answer_tokens, *map(len, answer_tokens.values())) + 8
    scorer = Scorer(model, n_ctx=n_ctx, threads=threads)
    template_ok = check_template(scorer, rows[0], model)

    y_true = [r["label"] for r in rows]
    y_pred = []
    start = time.perf_counter()
    for tokens in tqdm(prompts, desc=f"label scoring {variant}", unit="sample"):
        y_pred.append(pick_label(scorer.score(tokens, answer_tokens)))
    seconds = time.perf_counter() - start
    result = classification_metrics(y_true, y_pred, list(answers))
    result.pop("unparsed")
    prompt_tokens = sum(map(len, prompts))
    result.update(
        variant=variant,
        seconds_per_sample=seconds / len(rows),
        samples_per_second=len(rows) / seconds,
        prompt_tokens_per_second=prompt_tokens / seconds,
        evaluated_tokens_per_second=scorer.evaluated / seconds,
        prompt_tokens=prompt_tokens,
        model_bytes=model.stat().st_size,
        bits_per_weight=tensor_stats(model)["bits_per_weight"],
        chat_template_matches=template_ok,
    )

    if variant in p.free_answer:
        free, start = [], time.perf_counter()
        for tokens in tqdm(prompts, desc=f"free answer {variant}", unit="sample"):
            free.append(scorer.answer(tokens, answers, p.max_answer_tokens))
        parsed = [parse_answer(t, answers) for t in free]
        fm = classification_metrics(y_true, parsed, list(answers))
        result["free_answer"] = {
            "accuracy": fm["accuracy"],
            "f1": fm["f1"],
            "unparsed": fm["unparsed"],
            "confusion_matrix": fm["confusion_matrix"],
            "seconds_per_sample": (time.perf_counter() - start) / len(rows),
            "examples": [{"label": y, "answer": a} for y, a in list(zip(y_true, free))[:5]],
        }

    if predictions:
        with atomic_path(predictions, ".csv") as tmp:
            tmp.write_text("actual,predicted\n" + "".join(f"{a},{b}\n" for a, b in zip(y_true, y_pred)))
    write_json(out, result)
    free_note = f", free answer {result['free_answer']['accuracy']:.3f}" if "free_answer" in result else ""
    click.echo(f"{variant}: accuracy {result['accuracy']:.3f}, f1 {result['f1']:.3f}{free_note}, "
               f"{result['seconds_per_sample']:.3f} s/sample")
