"""Dialogue SFT data: ShareGPT / alpaca files cleaned, and tokenized with a mask on the replies."""

import json

import pytest
from conftest import committed, conversation, write_jsonl

from edgetune.core.errors import EdgetuneError
from edgetune.data.dialogue import ReplyRules, load_and_clean, to_messages, tokenize

KEEP_ALL = ReplyRules(min_chars=0, non_answers=[], blocked_words=[])


def test_sharegpt_and_alpaca_files_are_merged_and_cleaned(tmp_path, qwen_tokenizer):
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            conversation(("你好", "你好！有什么可以帮你？")),
            conversation((" 你好", "你好！有什么可以帮你？  "), system="你是助手"),  # the same exchange: a duplicate
            conversation(("在吗", "   ")),  # empty reply
            {"messages": [{"role": "user", "content": "一"}, {"role": "user", "content": "二"}]},  # roles out of order
            {"messages": [{"role": "bot", "content": "嗨"}]},  # unknown role
            {
                "messages": conversation(("写一首诗", "床前明月光"))["messages"]
                + [{"role": "user", "content": "再来"}]
            },  # no reply at the end
            conversation(("讲个长故事", "很久很久以前，" * 400)),  # over the token cap
        ],
    )
    (tmp_path / "a.jsonl").write_text((tmp_path / "a.jsonl").read_text() + '{"messages": [\n', encoding="utf-8")
    write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"conversations": [{"from": "human", "value": "天气如何"}, {"from": "gpt", "value": "今天晴。"}]},
            conversation(("你是谁", "我是一个语言模型。"), ("会写代码吗", "会，Python 和 C 都可以。")),
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
            conversation(("你叫什么", "小助手。")),  # kept
            conversation(("是真的吗", "是。")),  # one letter: too short
            conversation(("你好", "我不知道。")),  # a whole non-answer
            conversation(("怎么办", "我不知道怎么办，我们一起想想。")),  # says more: kept
            conversation(("Can you help?", "OK")),  # case ignored
            conversation(("你不诚实", " 你不诚实 ")),  # the question said back
            conversation(("你是谁", "我是助手。"), ("你真傻", "你才傻。")),  # the second reply holds a blocked word
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


def test_the_mask_covers_exactly_the_replies(qwen_tokenizer):
    turns = conversation(("你是谁", "我是一个语言模型。"), ("会写代码吗", "会。"), system="")["messages"]
    ids, mask = tokenize(turns, qwen_tokenizer)
    assert (
        ids
        == qwen_tokenizer(
            qwen_tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False
        ).input_ids
    )
    masked = qwen_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert masked == "我是一个语言模型。<|im_end|>\n会。<|im_end|>\n"
