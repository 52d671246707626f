"""Dialogue sources: the installed chatterbot corpus as conversations, and the dialogue presets."""

from pathlib import Path

import pytest
from conftest import REPO, committed

from edgetune.core import params
from edgetune.core.errors import EdgetuneError
from edgetune.data.dialogue import ReplyRules, load_and_clean


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
