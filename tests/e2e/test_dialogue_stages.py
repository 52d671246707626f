"""Dialogue SFT end to end: the stages (prepare, train, merge, convert, evaluate, report) on
conversations, for real."""

import json
import math

import pytest
from conftest import conversation, run, set_params, write_jsonl

from edgetune.report.dialogue_tables import cell


@pytest.fixture
def conversations(workdir, reviews):
    """Real reviews as a little dialogue data set: the user asks, the assistant judges."""
    rows = [
        conversation((f"这条评论是好评还是差评？{r['text']}", "好评。" if r["label"] == "positive" else "差评。"))
        for r in reviews
    ]
    return write_jsonl(workdir / "dialogue.jsonl", rows)


def test_dialogue_stages_measure_perplexity(workdir, tiny_model, tiny_gguf, conversations):
    set_params(
        workdir,
        data={"task": "sft", "source": [str(conversations)], "max_tokens": 256, "max_test": 6, "max_val": 4},
        train={"max_steps": 3, "batch_size": 4, "eval_steps": 3, "save_steps": 3},
        lora={"top_layers": None},
        quantize={"types": []},
        evaluate={"max_answer_tokens": 8},
    )  # the untuned base and the tuned f16 only
    steps = [
        ("prepare", "--model", tiny_model, "--out", workdir / "data", "--stats", workdir / "reports" / "data.json"),
        ("baseline", "--data", workdir / "data", "--out", workdir / "reports" / "eval" / "tfidf.json"),
        (
            "train",
            "--model",
            tiny_model,
            "--data",
            workdir / "data",
            "--out",
            workdir / "adapter",
            "--live",
            workdir / "reports" / "train",
        ),
        ("merge", "--base", tiny_model, "--adapter", workdir / "adapter", "--out", workdir / "merged"),
        ("convert", "--model", workdir / "merged", "--out", workdir / "f16.gguf"),
        (
            "evaluate",
            "--model",
            tiny_gguf,
            "--variant",
            "base",
            "--data",
            workdir / "data" / "test.jsonl",
            "--out",
            workdir / "reports" / "eval" / "base.json",
        ),
        (
            "evaluate",
            "--model",
            workdir / "f16.gguf",
            "--variant",
            "f16",
            "--data",
            workdir / "data" / "test.jsonl",
            "--out",
            workdir / "reports" / "eval" / "f16.json",
        ),
        (
            "report",
            "--eval-dir",
            workdir / "reports" / "eval",
            "--data-stats",
            workdir / "reports" / "data.json",
            "--train-metrics",
            workdir / "reports" / "train" / "metrics.json",
            "--out",
            workdir / "reports",
        ),
    ]
    for step in steps:
        result = run(*step)
        assert result.exit_code == 0, f"{step[0]}: {result.output}"
    data = json.loads((workdir / "reports" / "data.json").read_text())
    assert (
        data["task"] == "sft" and data["splits"]["test"]["n"] == 6 and data["splits"]["train"]["assistant_tokens"] > 0
    )
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"base", "f16"}  # no classical baseline for conversations
    for v in metrics["variants"].values():
        assert (
            math.isfinite(v["perplexity"])
            and v["perplexity"] > 1
            and v["loss"] == pytest.approx(math.log(v["perplexity"]))
        )
    assert math.isfinite(metrics["train"]["eval_perplexity"])
    summary = (workdir / "reports" / "summary.md").read_text()
    assert "| f16 |" in summary and "perplexity" in summary
    for rule, n in data["cleaning"]["dropped"].items():
        assert f"| {rule} | {n} |" in summary

    # Each variant's greedy reply to the first 5 held-out prompts, in the report beside the reference.
    test_rows = [json.loads(line) for line in (workdir / "data" / "test.jsonl").read_text().splitlines()]
    for name, gguf in (("base", tiny_gguf), ("f16", workdir / "f16.gguf")):
        replies = json.loads((workdir / "reports" / "eval" / f"{name}.json").read_text())["replies"]
        assert [(r["prompt"], r["reference"]) for r in replies] == [
            (t["messages"][-2]["content"], t["messages"][-1]["content"]) for t in test_rows[:5]
        ]
        assert replies[0]["reply"] == greedy(gguf, test_rows[0], 8)
        assert all(f"| {name} | {cell(r['reply'])} |" in summary for r in replies)

    set_params(workdir, data={"task": "classify"})  # the rows on disk are conversations
    test = workdir / "data" / "test.jsonl"
    result = run("evaluate", "--model", tiny_gguf, "--variant", "base", "--data", test, "--out", workdir / "x.json")
    assert result.exit_code != 0 and not (workdir / "x.json").exists()
    assert f"{test}: row 1 has no text, label, answer, prompt" in result.output and "holds sft rows" in result.output


def greedy(gguf, row: dict, n: int) -> str:
    """The last reply of a conversation, decoded token by token as the argmax of the logits."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, logits_all=True, verbose=False)
    prompt = row["input_ids"][: max(i for i, m in enumerate(row["assistant_mask"]) if not m) + 1]
    vocab, out = llama_cpp.llama_model_get_vocab(llm.model), []
    llm.eval(prompt)
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        out.append(token)
        llm.eval([token])
    return llm.detokenize(out).decode("utf-8", errors="ignore")
