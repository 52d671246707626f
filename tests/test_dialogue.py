"""Dialogue SFT: ShareGPT / alpaca files cleaned and tokenized with a mask on the replies, then
the stages (prepare, train, merge, convert, evaluate, report) on conversations, for real."""

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, committed, run, set_params, write_jsonl

from edgetune.core import params
from edgetune.core.errors import EdgetuneError
from edgetune.data.dialogue import ReplyRules, load_and_clean, to_messages, tokenize
from edgetune.report.dialogue_tables import cell

KEEP_ALL = ReplyRules(min_chars=0, non_answers=[], blocked_words=[])


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

    rows, stats = load_and_clean(
        [str(tmp_path / "*.jsonl"), str(tmp_path / "c.json")],
        qwen_tokenizer,
        max_tokens=512,
        rules=KEEP_ALL,
        revision="main",
        hub_params=committed("hub"),
    )
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


def test_each_reply_rule_drops_what_it_names(tmp_path, qwen_tokenizer):
    rules = ReplyRules(min_chars=2, non_answers=["(我)?不知道[。！]?", "ok"], blocked_words=["傻"])
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            chat(("你叫什么", "小助手。")),  # kept
            chat(("是真的吗", "是。")),  # one letter: too short
            chat(("你好", "我不知道。")),  # a whole non-answer
            chat(("怎么办", "我不知道怎么办，我们一起想想。")),  # says more: kept
            chat(("Can you help?", "OK")),  # case ignored
            chat(("你不诚实", " 你不诚实 ")),  # the question said back
            chat(("你是谁", "我是助手。"), ("你真傻", "你才傻。")),  # the second reply holds a blocked word
        ],
    )
    rows, stats = load_and_clean([str(tmp_path / "a.jsonl")], qwen_tokenizer, 512, rules, "main", committed("hub"))
    assert stats["dropped"] == {"too_short": 1, "non_answer": 2, "echo": 1, "blocked_word": 1}
    assert [r["messages"][-1]["content"] for r in rows] == ["小助手。", "我不知道怎么办，我们一起想想。"]
    with pytest.raises(EdgetuneError, match=r"data.non_answers: `\(不知道` is not a regular expression"):
        ReplyRules(0, ["(不知道"], [])


def test_dailydialog_emotionlines_and_utterance_lists_become_turns():
    assert to_messages({"dialog": ["Hi .", "Hello !", "How are you ?"], "act": [1, 1, 2]}) == [
        {"role": "user", "content": "Hi ."},
        {"role": "assistant", "content": "Hello !"},
    ]  # the last question has no reply: left out
    lines = [
        {"speaker": "Monica", "utterance": "There's nothing to tell!", "emotion": "neutral"},
        {"speaker": "Joey", "utterance": "C'mon,", "emotion": "neutral"},
        {"speaker": "Joey", "utterance": "you're going out with the guy!", "emotion": "joy"},
    ]
    assert [t["content"] for t in to_messages(lines)] == [
        "There's nothing to tell!",
        "C'mon, you're going out with the guy!",
    ]
    assert to_messages(["只有一句"]) == [] and to_messages([1, "二"]) is None


def test_the_installed_chatterbot_corpus_loads_as_conversations(qwen_tokenizer):
    """conf/data/chatterbot-zh.yaml on the installed package: every conversation is read, and the
    kept ones are the corpus' own utterances in turn."""
    import yaml

    from edgetune.data.dialogue_sources import chatterbot_files

    p = params.Reading(("data",), compose(data="chatterbot-zh")).data
    rules = ReplyRules(p.min_reply_chars, p.non_answers, p.blocked_words)
    rows, stats = load_and_clean(p.source, qwen_tokenizer, p.max_tokens, rules, p.revision, committed("hub"))

    files = chatterbot_files("chatterbot:chinese")
    corpus = [c for f in files for c in yaml.safe_load(f.read_text(encoding="utf-8"))["conversations"]]
    assert len(files) == 17 and stats["raw"] == len(corpus) == 467
    assert stats["files"] == {  # named by the corpus, not by this machine's paths
        f"chatterbot:chinese/{f.name}": len(yaml.safe_load(f.read_text(encoding="utf-8"))["conversations"])
        for f in files
    }
    assert (
        stats["clean"] + sum(stats["dropped"].values()) == stats["raw"] == len(rows) + sum(stats["dropped"].values())
    )
    pairs = {tuple(str(u) for u in c[: len(c) // 2 * 2]) for c in corpus}
    for r in rows:  # each kept conversation is one of the corpus', whole but for a last unanswered line
        assert tuple(t["content"] for t in r["messages"]) in pairs
        assert [t["role"] for t in r["messages"]] == ["user", "assistant"] * (len(r["messages"]) // 2)
    kept = {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows}
    assert ("你不诚实", "你不诚实") not in kept  # echo
    assert ("你是个酒鬼", "你是个瘾君子") not in kept  # blocked word
    assert ("你好", "你好") not in kept  # echo: the whole 19-line conversation it opens goes
    assert ("你的位置是什么", "到处") in kept  # short, and an answer
    assert ("你最喜欢什么书?", "我看不懂.") in kept and max(len(r["messages"]) for r in rows) >= 4  # multi-turn
    assert set(stats["dropped"]) <= {"echo", "non_answer", "blocked_word", "too_short", "duplicate"}

    with pytest.raises(EdgetuneError, match="no such files .languages: .*chinese"):
        chatterbot_files("chatterbot:klingon")


def compose(**groups) -> Path:
    """params.yaml as `dvc exp run -S group=name ...` composes it, in a temporary file."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    out = Path(tempfile.mkdtemp()) / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), [f"{k}={v}" for k, v in groups.items()])
    return out


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


def test_dialogue_presets_compose():
    from edgetune.data.dialogue_sources import is_dataset_id

    out = compose(model="qwen2.5-1.5b-instruct", data="emotional-dialogue", experiment="dialogue")
    read = params.Reading(("data", "train", "lora", "evaluate"), out)
    data, train, lora, evaluate = read.data, read.train, read.lora, read.evaluate
    assert data.task == "sft" and data.max_tokens == 1024
    assert [is_dataset_id(s) for s in data.source] == [True, True, False, False]  # two hub sets, then local files
    assert (lora.r, lora.dropout, lora.target_modules, lora.top_layers) == (16, 0.05, "all-linear", None)
    assert (train.lr, train.scheduler, train.warmup_ratio, train.epochs, train.batch_size, train.grad_accum) == (
        1e-4,
        "cosine",
        0.1,
        3.0,
        2,
        8,
    )
    assert (train.precision, evaluate.max_answer_tokens) == ("auto", 64)
