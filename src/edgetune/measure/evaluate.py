"""Stage evaluate: one variant on the test split, in its runtime (llama-cpp-python for a GGUF).

Label scoring: after each rendered prompt, compare the log-probabilities of the label answers
(正面 vs 负面); no free generation. Every prompt starts with the same template and instruction:
that prefix is computed once and shared, and `evaluate.batch_size` prompts decode together.
With `evaluate.calibrate`, per-label offsets fitted on the validation split correct a model
whose scores lean towards one label (scoring.fit_offsets); the raw accuracy is kept beside.

Free answer (for the variants in `evaluate.free_answer`): a greedy answer, parsed for the label
word, the way a user would ask. Label scoring is unfair to an untuned model, which starts its
answer with 这段文本… whatever it thinks; the free answer is its fair baseline.
"""

import os
import time
from pathlib import Path

import click
from tqdm import tqdm

from edgetune.core import tasks
from edgetune.core.config import EvaluateParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_jsonl, write_json, write_predictions
from edgetune.core.labels import apply_offsets, classification_metrics, fit_offsets, parse_answer, pick_label
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.runtimes.base import LabelScorer, Variant
from edgetune.runtimes.registry import open_variant


def check_template(scorer: LabelScorer, row: dict, where: Path) -> bool:
    """Does the model's own chat template render the prompt the model was trained on?"""
    rendered = scorer.renders(row["messages"][:-1])
    if rendered is None:
        click.echo(f"warning: {where} carries no chat template; users' apps will not format prompts as trained.")
        return False
    if rendered != row["prompt"]:
        click.echo(f"warning: {where}: its chat template renders prompts differently from training.")
    return rendered == row["prompt"]


def score_all(scorer: LabelScorer, prompts, answer_tokens, answers, p: EvaluateParams, free: bool, desc: str):
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
    files: Variant,
    variant: str,
    rows: list[dict],
    threads: int,
    p: EvaluateParams,
    out: Path,
    predictions: Path | None,
):
    """Perplexity on the held-out replies, and greedy replies (evaluate.max_answer_tokens) to a few."""
    result = files.perplexity(rows, threads, p.gpu_layers, f"perplexity {variant}", p.max_answer_tokens)
    result.update(variant=variant, **files.stats())
    if predictions:  # the confusion plot has nothing to show for conversations
        write_predictions(predictions, [], [])
    write_json(out, result)
    click.echo(f"{variant}: perplexity {result['perplexity']:.3f} on {result['assistant_tokens']} reply tokens")


def evaluate_labels(
    files: Variant, variant: str, rows: list, val_rows: list, val: Path, answers: dict, threads: int, p: EvaluateParams
) -> tuple[dict, list, list]:
    """Label scoring of the test rows (calibrated on the validation rows), and the free answer for
    the variants in evaluate.free_answer: the metrics, the true labels and the predicted ones."""
    tokens = files.tokenize([r["prompt"] for r in rows + val_rows], special=True)
    prompts, val_prompts = tokens[: len(rows)], tokens[len(rows) :]
    answer_tokens = dict(zip(answers, files.tokenize(list(answers.values()), special=False)))
    free = variant in p.free_answer
    scorer = files.label_scorer(prompts + val_prompts, p.batch_size, p.max_answer_tokens, threads, p.gpu_layers)
    template_ok = check_template(scorer, rows[0], files.paths[0])

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
        runtime=files.runtime,
        label_offsets=offsets,
        uncalibrated={"accuracy": raw["accuracy"], "f1": raw["f1"]},
        seconds_per_sample=seconds / len(rows),
        samples_per_second=len(rows) / seconds,
        prompt_tokens_per_second=prompt_tokens / seconds,
        evaluated_tokens_per_second=evaluated / seconds,
        prompt_tokens=prompt_tokens,
        **files.stats(),
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
    return result, y_true, y_pred


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
@reads("evaluate", "data.task", "data.labels")
def evaluate(
    model: Path, lora: Path | None, variant: str, data: Path, val: Path, out: Path, predictions: Path | None, params
):
    """Classify the test split with the GGUF MODEL, plus the LORA where given (or, for conversations, measure its
    perplexity) and write its metrics."""
    p, answers, task = params.evaluate, params.data.labels, params.data.task
    check_outputs(inputs=[model, lora, data, val], files=[out, predictions])
    files = open_variant(model, lora)
    files.check()
    rows = tasks.check_rows(read_jsonl(data)[: p.max_samples], task, data)
    if not rows:
        raise EdgetuneError(f"{data}: no examples to evaluate.")
    threads = p.threads or os.cpu_count() or 1
    if task == "sft":  # perplexity on the replies
        evaluate_dialogues(files, variant, rows, threads, p, out, predictions)
        return
    val_rows = tasks.check_rows(read_jsonl(val), task, val) if p.calibrate and val.is_file() else []
    if p.calibrate and not val_rows:
        raise EdgetuneError(
            f"{val}: no validation examples to calibrate on. Check data.max_val, or set "
            "evaluate.calibrate: false in params.yaml."
        )

    result, y_true, y_pred = evaluate_labels(files, variant, rows, val_rows, val, answers, threads, p)
    if predictions:
        write_predictions(predictions, y_true, y_pred)
    write_json(out, result)
    free_note = f", free answer {result['free_answer']['accuracy']:.3f}" if "free_answer" in result else ""
    click.echo(
        f"{variant}: accuracy {result['accuracy']:.3f}, f1 {result['f1']:.3f}{free_note}, "
        f"{result['seconds_per_sample']:.3f} s/sample"
    )
