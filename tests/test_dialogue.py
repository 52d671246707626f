"""Dialogue SFT: ShareGPT / alpaca files cleaned and tokenized with a mask on the replies, then
the stages (prepare, train, merge, convert, evaluate, report) on conversations, for real."""

import json
import math

import pytest
from conftest import REPO, run, set_params, write_jsonl

from edgetune.dialogue import load_and_clean, tokenize


def chat(*pairs, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    for user, reply in pairs:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": turns}


def test_sharegpt_and_alpaca_files_are_merged_and_cleaned(tmp_path, qwen_tokenizer):
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            chat(("你好", "你好！有什么可以帮你？")),
            chat((" 你好", "你好！有什么可以帮你？  "), system="你是助手"),  # the same exchange: a duplicate
            chat(("在吗", "   ")),  # empty reply
            {"messages": [{"role": "user", "content": "一"}, {"role": "user", "content": "二"}]},  # roles out of order
            {"messages": [{"role": "bot", "content": "嗨"}]},  # unknown role
            {
                "messages": chat(("写一首诗", "床前明月光"))["messages"] + [{"role": "user", "content": "再来"}]
            },  # no reply at the end
            chat(("讲个长故事", "很久很久以前，" * 400)),  # over the token cap
        ],
    )
    (tmp_path / "a.jsonl").write_text((tmp_path / "a.jsonl").read_text() + '{"messages": [\n', encoding="utf-8")
    write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"conversations": [{"from": "human", "value": "天气如何"}, {"from": "gpt", "value": "今天晴。"}]},
            chat(("你是谁", "我是一个语言模型。"), ("会写代码吗", "会，Python 和 C 都可以。")),
        ],
    )
    (tmp_path / "c.json").write_text(
        json.dumps(
            [
                {"instruction": "翻译成英文", "input": "谢谢", "output": "Thank you"},
                {"instruction": "总结", "input": "", "output": ""},  # empty reply
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )

    rows, stats = load_and_clean([str(tmp_path / "*.jsonl"), str(tmp_path / "c.json")], qwen_tokenizer, max_tokens=512)
    assert stats["raw"] == 12 and stats["clean"] == 4
    assert stats["dropped"] == {"duplicate": 1, "empty_reply": 2, "invalid": 4, "too_long": 1}
    replies = [t["content"] for r in rows for t in r["messages"] if t["role"] == "assistant"]
    assert replies == [
        "你好！有什么可以帮你？",
        "今天晴。",
        "我是一个语言模型。",
        "会，Python 和 C 都可以。",
        "Thank you",
    ]
    assert rows[3]["messages"][0] == {"role": "user", "content": "翻译成英文\n\n谢谢"}
    assert all(len(r["input_ids"]) == len(r["assistant_mask"]) <= 512 for r in rows)


def test_the_mask_covers_exactly_the_replies(qwen_tokenizer):
    turns = chat(("你是谁", "我是一个语言模型。"), ("会写代码吗", "会。"), system="")["messages"]
    ids, mask = tokenize(turns, qwen_tokenizer)
    assert (
        ids
        == qwen_tokenizer(
            qwen_tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False
        ).input_ids
    )
    masked = qwen_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "我是一个语言模型。<|im_end|>\n会。<|im_end|>\n"


@pytest.fixture
def conversations(workdir, reviews):
    """Real reviews as a little dialogue data set: the user asks, the assistant judges."""
    rows = [
        chat((f"这条评论是好评还是差评？{r['text']}", "好评。" if r["label"] == "positive" else "差评。"))
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

    set_params(workdir, data={"task": "classify"})  # the rows on disk are conversations
    test = workdir / "data" / "test.jsonl"
    result = run("evaluate", "--model", tiny_gguf, "--variant", "base", "--data", test, "--out", workdir / "x.json")
    assert result.exit_code != 0 and not (workdir / "x.json").exists()
    assert f"{test}: row 1 has no text, label, answer, prompt" in result.output and "holds sft rows" in result.output


def test_dialogue_presets_compose(tmp_path):
    from dvc.utils.hydra import compose_and_dump

    from edgetune import params
    from edgetune.prepare import DataParams
    from edgetune.train import LoraParams, TrainParams

    out = tmp_path / "params.yaml"
    compose_and_dump(
        out,
        str(REPO / "conf"),
        None,
        "config",
        str(REPO),
        ["model=qwen2.5-1.5b-instruct", "data=sharegpt", "experiment=dialogue"],
    )
    data, train, lora = (
        params.load(s, c, out) for s, c in (("data", DataParams), ("train", TrainParams), ("lora", LoraParams))
    )
    assert data.task == "sft" and data.max_tokens == 2048
    assert (lora.r, lora.dropout, lora.target_modules, lora.top_layers) == (16, 0.05, "all-linear", None)
    assert (train.lr, train.scheduler, train.warmup_ratio, train.epochs, train.batch_size, train.grad_accum) == (
        1e-4,
        "cosine",
        0.1,
        3.0,
        2,
        8,
    )
