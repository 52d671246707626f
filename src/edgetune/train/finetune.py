"""Stage train: LoRA on the base with TRL's SFTTrainer, loss on the answer only.

The base weights are those of the quantized base GGUF that ships (`--weights`, lora.train_on),
dequantized: the adapter learns on what a phone runs (base_weights.py).

Checkpoints go to <adapter>/checkpoints every `train.save_steps`; the stage's output is
`persist: true` in dvc.yaml, so an interrupted `dvc repro` resumes from the last one (resume.py).
Train and validation loss go through dvclive into `dvc plots`.
`lora.quantization: 4bit` trains on a 4-bit base (QLoRA, qlora.py); several visible GPUs make
the stage relaunch itself under DDP (distributed.py). The loss is in answer_loss.py, the
adapter's targets and config in adapter.py, bf16 and memory in precision.py.
"""

import math
from pathlib import Path

import click

from edgetune.core import tasks
from edgetune.core.config import TrainParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_jsonl
from edgetune.core.labels import first_tokens
from edgetune.core.outputs import check_outputs, mark
from edgetune.core.params import reads
from edgetune.core.remote_code import allowed as trust_remote_code
from edgetune.train import base_weights, resume
from edgetune.train.adapter import lora_config, name_adapter, save_adapter
from edgetune.train.answer_loss import label_accuracy, make_trainer_class
from edgetune.train.distributed import relaunch_on_gpus
from edgetune.train.precision import peak_memory, use_bf16


def to_dataset(rows: list[dict], task: str):
    """What TRL trains on, with the loss on the answer or the assistant turns only.

    Labelled examples go in TRL's conversational prompt-completion format; conversations come
    tokenized from prepare, with their assistant mask as TRL's completion mask.
    """
    from datasets import Dataset

    if task == "sft":
        return Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["assistant_mask"]} for r in rows])
    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])


# A checkpoint made by other training code is not resumed.
CODE = [
    Path(__file__),
    *(Path(__file__).with_name(m) for m in ("adapter.py", "answer_loss.py", "qlora.py", "base_weights.py")),
]


def check_settings(p: TrainParams, train_rows: list, val_rows: list, data: Path) -> None:
    if not train_rows:
        raise EdgetuneError(f"{data / 'train.jsonl'}: no training examples. Check data.max_train and the data source.")
    if p.best_checkpoint and val_rows and p.save_steps % p.eval_steps:
        raise EdgetuneError(
            f"params.yaml: train.save_steps ({p.save_steps}) must be a multiple of train.eval_steps "
            f"({p.eval_steps}) to keep the best checkpoint; change one, or set train.best_checkpoint: false."
        )


def label_choices(tokenizer, rows: list[dict]) -> list[int] | None:
    """The first token of each label answer (data.task: classify), for validation accuracy by
    first-token label scoring; None where those tokens do not tell the answers apart."""
    answers = sorted({r["answer"] for r in rows})
    choices = first_tokens(lambda a: tokenizer(a, add_special_tokens=False).input_ids, answers)
    return choices if choices and len(choices) > 1 else None


def sft_config(p: TrainParams, checkpoints: Path, validate: bool, by_accuracy: bool):
    """train.* as TRL's SFTConfig."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(checkpoints),
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum,
        num_train_epochs=p.epochs,
        max_steps=p.max_steps,
        learning_rate=p.lr,
        lr_scheduler_type=p.scheduler,
        # transformers reads a warmup below 1 as a fraction of the steps and from 1 up as a number of
        # steps: the whole run (1.0) goes in as the largest fraction below 1, which it rounds up to all.
        warmup_steps=min(p.warmup_ratio, math.nextafter(1.0, 0.0)),
        max_length=p.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if p.group_by_length else "random",
        logging_steps=p.logging_steps,
        eval_strategy="steps" if validate else "no",
        eval_steps=p.eval_steps,
        save_strategy="steps",
        save_steps=p.save_steps,
        save_total_limit=2,  # with load_best_model_at_end: the best and the last
        load_best_model_at_end=p.best_checkpoint and validate,
        metric_for_best_model="accuracy" if by_accuracy else "loss",
        seed=p.seed,
        data_seed=p.seed,
        bf16=False,  # weights are already bf16; autocast would only slow it down
        activation_checkpointing=p.gradient_checkpointing,
        ddp_find_unused_parameters=False,  # every adapter weight gets a gradient on every step
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


def stop_when_not_finite(lr: float):
    """A callback that ends a run whose loss or gradient norm is NaN or infinite: a learning rate too
    high for the model makes them overflow, and every later step, and the adapter, would be NaN. The
    Trainer's logged loss leaves out a NaN step's (logging_nan_inf_filter): the gradient norm, and at
    the end the adapter's weights, are checked as well."""
    import torch
    from transformers import TrainerCallback

    def diverged(what: str, step: int) -> EdgetuneError:
        return EdgetuneError(
            f"training diverged: {what} at step {step}. train.lr ({lr:g}) is too high for this model; "
            f"lower it in params.yaml (e.g. to {lr / 10:g}) and train again."
        )

    class StopWhenNotFinite(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm", "eval_loss"):
                if key in (logs or {}) and not math.isfinite(logs[key]):
                    raise diverged(f"the {key.replace('_', ' ')} is {logs[key]}", state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            trained = [w for w in model.parameters() if w.requires_grad]
            if not all(torch.isfinite(w).all() for w in trained):
                raise diverged("the adapter's weights are NaN or infinite", state.global_step)

    return StopWhenNotFinite()


def run_summary(trainer, result, validate: bool, best: bool) -> dict:
    """The run's figures, with the validation metrics of the adapter that is saved (the best
    checkpoint's with train.best_checkpoint, else the last step's)."""
    summary = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
    }
    summary.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    summary["tokens_per_second"] = summary["tokens_seen"] / max(result.metrics["train_runtime"], 1e-9)
    summary.update(peak_memory())
    evals = {log["step"]: log for log in trainer.state.log_history if "eval_loss" in log}
    chosen = trainer.state.global_step
    if best and trainer.state.best_model_checkpoint:
        chosen = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    if validate and chosen not in evals:
        evals[chosen] = trainer.evaluate()  # every process takes part
    summary["chosen_step"] = chosen
    if validate:
        summary.update({k: v for k, v in evals[chosen].items() if k in ("eval_loss", "eval_accuracy")})
        summary["eval_perplexity"] = math.exp(min(summary["eval_loss"], 50))
    return summary


def take_outputs(state, out: Path, live_dir: Path, resume_from, stamp: str, source: Path, lr: float):
    """Everything is checked and loaded: only now may checkpoints this run cannot use go. The
    training's callbacks, and (in the main process) its dvclive run."""
    from transformers.integrations import DVCLiveCallback

    state.wait_for_everyone()  # every process has decided before the main one clears old checkpoints
    if state.is_main_process:
        click.echo(f"resuming from {resume_from}" if resume_from else f"training from {source}")
        mark(out)
        if resume_from is None:
            resume.start_afresh(out / "checkpoints", stamp)
    state.wait_for_everyone()
    callbacks, live = [stop_when_not_finite(lr)], None
    if state.is_main_process:
        mark(live_dir)
        live = resume.open_live(live_dir, resume=resume_from is not None)
        callbacks.append(DVCLiveCallback(live=live))
    return callbacks, live


def finish(trainer, summary: dict, live, out: Path, stamp: str) -> None:
    """The run's figures into dvclive's summary, and the adapter beside its checkpoints."""
    for key, value in summary.items():
        if isinstance(value, (int, float)):
            live.summary[key] = value
    live.end()
    save_adapter(trainer.model, out)
    resume.finish(out / "checkpoints", stamp)
    click.echo(f"adapter saved to {out}: {summary}")


@click.command("train")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A quantized GGUF of the base, or an ONNX Runtime GenAI model.onnx: train on its dequantized "
    "weights (lora.train_on). Default: the checkpoint's.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("data/processed"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("models/adapter"), show_default=True
)
@click.option(
    "--live",
    "live_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/train"),
    show_default=True,
    help="dvclive folder: loss curves and training metrics.",
)
@click.option(
    "--accelerate-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("configs/accelerate.yaml"),
    show_default=True,
    help="Launch settings used when several GPUs are visible.",
)
@reads("lora", "train", "data.task", "model.trust_remote_code")
def train(model: Path, weights: Path | None, data: Path, out: Path, live_dir: Path, accelerate_config: Path, params):
    """Train a LoRA adapter on DATA/train.jsonl, validating on DATA/val.jsonl.

    With several GPUs visible it reruns itself under `accelerate launch`, one process per GPU.
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer

    check_outputs(inputs=[model, weights, data], folders=[out, live_dir])
    p, lp, task = params.train, params.lora, params.data.task
    trust, bf16 = trust_remote_code(model, params.model.trust_remote_code), use_bf16(p)
    train_rows, val_rows = (
        tasks.check_rows(read_jsonl(data / f), task, data / f) for f in ("train.jsonl", "val.jsonl")
    )
    check_settings(p, train_rows, val_rows, data)
    relaunch_on_gpus(accelerate_config)

    state = PartialState(cpu=not torch.cuda.is_available())  # one process, or one of several under DDP
    checkpoints = out / "checkpoints"
    made_from = [
        data / "train.jsonl",
        data / "val.jsonl",
        model / "config.json",
        *([weights] if weights else []),
        *CODE,
    ]
    stamp = resume.fingerprint([p, lp], made_from)
    resume_from = resume.resume_point(checkpoints, stamp)

    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
    choices = label_choices(tokenizer, train_rows) if task == "classify" else None
    base = base_weights.load(
        model, weights, lp.quantization == "4bit", bf16, str(state.device), p.gradient_checkpointing, trust
    )
    lora = lora_config(lp, base)
    callbacks, live = take_outputs(state, out, live_dir, resume_from, stamp, weights or model, p.lr)
    trainer = make_trainer_class()(
        model=base,
        args=sft_config(p, checkpoints, validate=bool(val_rows), by_accuracy=bool(choices)),
        train_dataset=to_dataset(train_rows, task),
        eval_dataset=to_dataset(val_rows, task) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora,
        compute_metrics=label_accuracy(choices) if choices else None,
        callbacks=callbacks,
    )
    trainer.choices = choices
    name_adapter(trainer.model, model)
    result = trainer.train(resume_from_checkpoint=resume_from)
    summary = {
        **run_summary(trainer, result, validate=bool(val_rows), best=p.best_checkpoint and bool(val_rows)),
        "bf16_weights": bf16,
        "qlora": lp.quantization == "4bit",
        "processes": state.num_processes,
    }
    if state.is_main_process:
        finish(trainer, summary, live, out, stamp)
