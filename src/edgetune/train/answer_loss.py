"""The loss on the answer only, through TRL's SFTTrainer, and validation accuracy for free.

The answer is a few tokens at the end of each example; computing the output layer only where a
labelled token is predicted makes a CPU step several times cheaper (answer_only_loss). With the
first token of each label answer, the same pass scores the validation split (label_accuracy).
"""

from types import SimpleNamespace


def answer_only_loss(model, inputs, num_items_in_batch=None, choices: list[int] | None = None):
    """Causal-LM loss computed from the output layer at the labelled positions only.

    The answer is a few tokens at the end of each example, but the output layer is 151,936 wide
    for Qwen: building logits (and TRL's per-token entropy) for every position costs most of a
    CPU step. The model's own `logits_to_keep` mask sends only the positions that predict a
    labelled token through the output layer. The call goes through `model` itself, so under
    DDP the wrapper's forward runs and gradients are synchronised.

    With `choices` (the first token of each label answer) it also returns, per example, the
    logits of those tokens where the answer begins: label scoring of the validation split for
    the price of its loss.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    logits = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs.get("attention_mask"),
        position_ids=inputs.get("position_ids"),
        use_cache=False,
        logits_to_keep=F.pad(keep, (0, 1)),  # position t predicts token t + 1
    ).logits.float()  # one row per labelled token, example by example
    n = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    loss = F.cross_entropy(logits, labels[keep], reduction="sum") / torch.as_tensor(n).clamp(min=1).to(logits.device)
    if choices is None:
        return loss
    counts = keep.sum(1)
    first = counts.cumsum(0) - counts  # each example's first labelled row
    return loss, logits[first][:, choices]


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
                if return_outputs:
                    return loss, SimpleNamespace(logits=None)
                return loss if num_items_in_batch is None else loss * self.token_share()
            loss, scores = answer_only_loss(model, inputs, num_items_in_batch, self.choices)
            return loss, SimpleNamespace(logits=scores)

        def token_share(self) -> int:
            """As Trainer.compute_loss: the tokens counted are every process's, while DDP averages gradients."""
            return self.accelerator.num_processes if self.args.average_tokens_across_devices else 1

    return AnswerOnlySFTTrainer
