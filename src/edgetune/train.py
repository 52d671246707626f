"""Stage train: LoRA on the base checkpoint with TRL's SFTTrainer, loss on the answer only.

Checkpoints go to <adapter>/checkpoints every `train.save_steps`; the stage's output is
`persist: true` in dvc.yaml, so an interrupted `dvc repro` resumes from the last one, provided
the params and data it was made from are unchanged (a fingerprint file says so).
Train and validation loss go through dvclive into `dvc plots`.
"""

import dataclasses
import hashlib
import json
import os
import shutil
from types import SimpleNamespace
from pathlib import Path

import click

from . import params
from .errors import EdgetuneError
from .files import read_jsonl, write_json

FINGERPRINT = "fingerprint.json"


@dataclasses.dataclass
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # dropout costs a quarter of the CPU step time
    target_modules: str | list[str] = "all-linear"
    top_layers: int | None = None  # adapters in the last N decoder layers only: backward stops there


@dataclasses.dataclass
class TrainParams:
    lr: float = 3e-4
    scheduler: str = "linear"
    warmup_ratio: float = 0.05
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    group_by_length: bool = True  # batches of similar length waste less compute on padding
    gradient_checkpointing: bool = False  # saves activation memory for a third more compute
    precision: str = "auto"  # auto | bf16 | fp32: bf16 weights where the hardware has bf16
    logging_steps: int = 5
    eval_steps: int = 50
    save_steps: int = 50  # a multiple of eval_steps when best_checkpoint is on
    best_checkpoint: bool = False  # keep the checkpoint with the best validation accuracy, not the last
    seed: int = 0


def answer_only_loss(model, inputs, num_items_in_batch=None, choices: list[int] | None = None):
    """Causal-LM loss computed from the output layer at the labelled positions only.

    The answer is a few tokens at the end of each example, but the output layer is 151,936 wide
    for Qwen: building logits (and TRL's per-token entropy) for every position costs most of a
    CPU step. Here the decoder runs as usual and the output layer sees only the positions that
    predict a labelled token.

    With `choices` (the first token of each label answer) it also returns, per example, the
    logits of those tokens where the answer begins: label scoring of the validation split for
    the price of its loss.
    """
    import torch
    import torch.nn.functional as F
    from peft import PeftModel

    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    hidden = causal_lm.get_decoder()(
        input_ids=inputs["input_ids"],
        attention_mask=inputs.get("attention_mask"),
        position_ids=inputs.get("position_ids"),
        use_cache=False,
    ).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    softcap = getattr(causal_lm.config.get_text_config(), "final_logit_softcapping", None)
    if softcap:  # Gemma caps its logits
        logits = torch.tanh(logits / softcap) * softcap
    n = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    loss = F.cross_entropy(logits, labels[keep], reduction="sum") / torch.as_tensor(n).clamp(min=1).to(logits.device)
    if choices is None:
        return loss
    start = keep.int().argmax(1)  # each example's first labelled position
    first = hidden[:, :-1][torch.arange(len(start)), start]
    return loss, first @ causal_lm.get_output_embeddings().weight[choices].T


def label_accuracy(choices: list[int]):
    """compute_metrics for the Trainer: the label whose first token scores highest vs the truth."""
    import numpy as np

    def compute(pred) -> dict:
        scores, labels = pred.predictions, pred.label_ids
        truth = labels[np.arange(len(labels)), (labels != -100).argmax(1)]
        return {"accuracy": float(np.mean(np.asarray(choices)[scores.argmax(1)] == truth))}

    return compute


def make_trainer_class():
    from trl import SFTTrainer

    class AnswerOnlySFTTrainer(SFTTrainer):
        """TRL's SFTTrainer (data, collation, PEFT, checkpoints) with the answer-only loss above."""

        choices: list[int] | None = None  # first tokens of the label answers, for validation accuracy

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not (return_outputs and self.choices):
                loss = answer_only_loss(model, inputs, num_items_in_batch)
                return (loss, SimpleNamespace(logits=None)) if return_outputs else loss
            loss, scores = answer_only_loss(model, inputs, num_items_in_batch, self.choices)
            return loss, SimpleNamespace(logits=scores)

    return AnswerOnlySFTTrainer


def adapter_targets(lp: LoraParams, model) -> str | list[str]:
    """PEFT's target_modules: as given, or those modules within the last `lora.top_layers` layers."""
    if lp.top_layers is None:
        return lp.target_modules
    import torch

    n_layers = model.config.get_text_config().num_hidden_layers
    if not 0 < lp.top_layers <= n_layers:
        raise EdgetuneError(f"params.yaml: lora.top_layers is {lp.top_layers}; the model has {n_layers} decoder "
                            f"layers. Use 1..{n_layers}, or null for all.")
    top = {str(i) for i in range(n_layers - lp.top_layers, n_layers)}
    targets = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if "layers" not in parts[:-1] or parts[parts.index("layers") + 1] not in top:
            continue
        if isinstance(module, torch.nn.Linear) if lp.target_modules == "all-linear" else parts[-1] in lp.target_modules:
            targets.append(name)
    return targets


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # bf16 matmuls are fast only with native support (AVX-512 BF16 or AMX)
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(p: TrainParams) -> bool:
    if p.precision not in ("auto", "bf16", "fp32"):
        raise EdgetuneError(f"params.yaml: train.precision is {p.precision!r}; use auto, bf16 or fp32.")
    return p.precision == "bf16" or (p.precision == "auto" and bf16_supported())


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """TRL's conversational prompt-completion format: the loss falls on the completion only."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]


def fingerprint(settings: list, files: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(s) for s in settings], sort_keys=True).encode())
    for f in files:
        digest.update(f.read_bytes() if f.is_file() else str(f).encode())
    return digest.hexdigest()


def resume_point(checkpoints: Path, print_: str) -> str | None:
    """The last checkpoint if it was made from the same params and data, else start afresh."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = checkpoints / FINGERPRINT
    if checkpoints.is_dir() and stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == print_:
        last = get_last_checkpoint(str(checkpoints))
        if last:
            click.echo(f"resuming from {last}")
            return last
    if checkpoints.exists():
        shutil.rmtree(checkpoints)  # made from other params or data: not ours to continue
    checkpoints.mkdir(parents=True)
    write_json(stamp, {"fingerprint": print_})
    return None


@click.command("train")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("models/base"), show_default=True)
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("data/processed"), show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("models/adapter"), show_default=True)
@click.option("--live", "live_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/train"), show_default=True, help="dvclive folder: loss curves and training metrics.")
def train(model: Path, data: Path, out: Path, live_dir: Path):
    """Train a LoRA adapter on DATA/train.jsonl, validating on DATA/val.jsonl."""
    import torch
    from datasets import Dataset
    from dvclive import Live
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import DVCLiveCallback
    from trl import SFTConfig

    p = params.load("train", TrainParams)
    lp = params.load("lora", LoraParams)
    bf16 = use_bf16(p)
    train_rows, val_rows = read_jsonl(data / "train.jsonl"), read_jsonl(data / "val.jsonl")
    if not train_rows:
        raise EdgetuneError(f"{data / 'train.jsonl'}: no training examples. Check data.max_train and the data source.")

    if p.best_checkpoint and val_rows and p.save_steps % p.eval_steps:
        raise EdgetuneError(f"params.yaml: train.save_steps ({p.save_steps}) must be a multiple of train.eval_steps "
                            f"({p.eval_steps}) to keep the best checkpoint; change one, or set train.best_checkpoint: false.")
    best = p.best_checkpoint and bool(val_rows)

    checkpoints = out / "checkpoints"
    resume = resume_point(checkpoints, fingerprint([p, lp], [data / "train.jsonl", data / "val.jsonl", model / "config.json"]))

    tokenizer = AutoTokenizer.from_pretrained(model)
    # Validation accuracy by first-token label scoring, where the answers' first tokens differ.
    choices = [tokenizer(a, add_special_tokens=False).input_ids[0] for a in sorted({r["answer"] for r in train_rows})]
    choices = choices if len(set(choices)) == len(choices) > 1 else None
    # bf16 weights with no autocast: seven times faster than fp32 weights under bf16 autocast on a
    # CPU with AVX-512 BF16 (autocast re-casts every weight on every step). LoRA weights stay fp32.
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if bf16 else torch.float32)
    lora = LoraConfig(
        r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=adapter_targets(lp, base),
        task_type="CAUSAL_LM",
    )
    config = SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum,
        num_train_epochs=p.epochs,
        max_steps=p.max_steps,
        learning_rate=p.lr,
        lr_scheduler_type=p.scheduler,
        warmup_steps=p.warmup_ratio,
        max_length=p.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        logging_steps=p.logging_steps,
        eval_strategy="steps" if val_rows else "no",
        eval_steps=p.eval_steps,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=2,  # with load_best_model_at_end: the best and the last
        load_best_model_at_end=best,
        metric_for_best_model="accuracy" if choices else "loss",
        seed=p.seed,
        data_seed=p.seed,
        bf16=False,  # weights are already bf16; autocast would only slow it down
        gradient_checkpointing=p.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    live_dir.mkdir(parents=True, exist_ok=True)
    try:
        live = Live(dir=str(live_dir), resume=resume is not None, save_dvc_exp=False, dvcyaml=None, report=None)
    except Exception as e:  # scmrepo's SCMError: dvclive reads the current commit
        if "Empty git repo" not in str(e):
            raise
        raise EdgetuneError("this git repository has no commit yet; dvclive needs one. Commit dvc.yaml and "
                            "params.yaml (`git add -A && git commit`), then run again.") from None
    trainer = make_trainer_class()(
        model=base,
        args=config,
        train_dataset=Dataset.from_list(to_prompt_completion(train_rows)),
        eval_dataset=Dataset.from_list(to_prompt_completion(val_rows)) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora,
        compute_metrics=label_accuracy(choices) if choices else None,
        callbacks=[DVCLiveCallback(live=live)],
    )
    trainer.choices = choices
    result = trainer.train(resume_from_checkpoint=resume)
    summary = {"train_loss": result.training_loss, "steps": trainer.state.global_step, "bf16_weights": bf16,
               "tokens_seen": trainer.state.num_input_tokens_seen}
    summary.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    summary["tokens_per_second"] = summary["tokens_seen"] / max(result.metrics["train_runtime"], 1e-9)
    evals = {log["step"]: log for log in trainer.state.log_history if "eval_loss" in log}
    chosen = trainer.state.global_step
    if best and trainer.state.best_model_checkpoint:
        chosen = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    if val_rows and chosen not in evals:
        evals[chosen] = trainer.evaluate()
    summary["chosen_step"] = chosen
    if val_rows:  # the validation metrics of the adapter that is saved
        summary.update({k: v for k, v in evals[chosen].items() if k in ("eval_loss", "eval_accuracy")})
    for key, value in summary.items():
        if isinstance(value, (int, float)):
            live.summary[key] = value
    live.end()

    # The adapter lands beside its checkpoints only once training has finished.
    tmp = out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    click.echo(f"adapter saved to {out}: {summary}")
