"""Dialogue data for supervised fine-tuning: raw records -> checked, cleaned conversations.

to_messages  ShareGPT {"messages": [{"role", "content"}]} (or {"conversations": [{"from",
             "value"}]}), alpaca {"instruction", "input", "output", "system"?}, a list of
             utterances (chatterbot) or {"dialog": [...]} (DailyDialog), and a list of
             {"speaker", "utterance"} (EmotionLines) -> turns
clean        drop invalid records (unknown roles, roles out of order, no reply at the end) and
             conversations with a reply that is empty, too short to answer, the user's own words
             again, a templated non-answer or holds a blocked word; then duplicates by their user
             + assistant text, and conversations longer than the token cap; count each rule
tokenize     the conversation in the model's template, with a mask over the assistant turns:
             the loss falls on the replies only
"""

import collections
import dataclasses
import glob
import hashlib
import re
import unicodedata

import click

from edgetune.core.errors import EdgetuneError
from edgetune.data.dialogue_sources import read_records

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


def alternate(utterances: list[str]) -> list[dict]:
    """Utterances that answer each other in turn: user, assistant, user, ... ending on a reply."""
    turns = [{"role": ("user", "assistant")[i % 2], "content": u} for i, u in enumerate(utterances)]
    return turns[: len(turns) // 2 * 2]


def by_speaker(lines: list[dict]) -> list[str]:
    """EmotionLines: a speaker's consecutive lines are one turn."""
    merged, last = [], object()
    for line in lines:
        if line.get("speaker") == last:
            merged[-1] += " " + line["utterance"]
        else:
            merged.append(line["utterance"])
        last = line.get("speaker")
    return merged


def to_messages(record) -> list[dict] | None:
    """One record as chat turns, or None when it is not a conversation edgetune can read."""
    if isinstance(record, dict) and isinstance(record.get("dialog"), list):
        record = record["dialog"]  # DailyDialog
    if isinstance(record, list):
        if all(isinstance(u, str) for u in record):
            return alternate(record)
        if all(isinstance(u, dict) and isinstance(u.get("utterance"), str) for u in record):
            return alternate(by_speaker(record))
        return None
    if not isinstance(record, dict):
        return None
    if "instruction" in record and "output" in record:  # alpaca
        user = "\n\n".join(str(record[k]) for k in ("instruction", "input") if record.get(k))
        turns = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list):
        return None
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role, content = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        if role not in ROLES or not isinstance(content, str):
            return None
        out.append({"role": ROLES[role], "content": content})
    return out


@dataclasses.dataclass
class ReplyRules:
    """What makes a reply unfit to learn from (data.min_reply_chars, non_answers, blocked_words)."""

    min_chars: int  # letters and digits, punctuation and spaces not counted
    non_answers: list[str]  # regular expressions a whole reply may not match
    blocked_words: list[str]

    def __post_init__(self):
        self.patterns = []
        for pattern in self.non_answers:
            try:
                self.patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as e:
                raise EdgetuneError(
                    f"params.yaml: data.non_answers: `{pattern}` is not a regular expression ({e}). Fix it."
                ) from None
        self.words = [w.lower() for w in self.blocked_words]

    def problem(self, reply: str, asked: str) -> str | None:
        text = reply.strip()
        if not text:
            return "empty_reply"
        if sum(unicodedata.category(c)[0] in "LN" for c in text) < self.min_chars:
            return "too_short"
        if " ".join(text.split()).lower() == " ".join(asked.split()).lower():
            return "echo"  # the user's own words said back
        if any(p.fullmatch(text) for p in self.patterns):
            return "non_answer"
        if any(w in text.lower() for w in self.words):
            return "blocked_word"
        return None


def problem(turns: list[dict] | None, rules: ReplyRules) -> str | None:
    """Why a conversation cannot be trained on, or None: invalid, or the first rule a reply breaks."""
    if not turns:
        return "invalid"
    body = turns[1:] if turns[0]["role"] == "system" else turns
    if not body or body[-1]["role"] != "assistant":
        return "invalid"
    if any(t["role"] != ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(body)):
        return "invalid"  # a system turn later on, two user turns in a row, ...
    for asked, reply in zip(body[::2], body[1::2]):
        why = rules.problem(reply["content"], asked["content"])
        if why:
            return why
    return None


def fingerprint(turns: list[dict]) -> str:
    """The same exchange with another system prompt or other spacing is a duplicate."""
    text = "\x1f".join(" ".join(t["content"].split()) for t in turns if t["role"] != "system")
    return hashlib.sha256(text.encode()).hexdigest()


def tokenize(turns: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and a 0/1 mask that is 1 on the assistant replies.

    Each reply's span is found by rendering the conversation up to it (with the generation
    prompt) and through it; the template must render conversations as growing prefixes.
    """

    def render(part, prompt=False):
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt)

    full = render(turns)
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] == "assistant":
            start, end = render(turns[:k], prompt=True), render(turns[: k + 1])
            if not (full.startswith(start) and full.startswith(end)):
                raise EdgetuneError(
                    "the model's chat template does not render a conversation as growing prefixes; "
                    "edgetune cannot find the replies in it. Set model.chat_template."
                )
            spans.append((len(start), len(end)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in enc["offset_mapping"]]
    return enc["input_ids"], mask


def load_and_clean(
    sources: list[str], tokenizer, max_tokens: int, rules: ReplyRules, revision: str, hub_params
) -> tuple[list[dict], dict]:
    """Every conversation in `sources` (hub datasets at `revision` unless pinned), cleaned and
    tokenized, with what was dropped and why."""
    counts, per_source = collections.Counter(), collections.Counter()
    seen, kept = set(), []
    unmatched = [s for s in sources if glob.has_magic(s) and not glob.glob(s)]
    for pattern in unmatched:
        click.echo(f"warning: data.source `{pattern}` matches no file; the other sources are read.")
    for source in sources:
        for where, record in read_records(source, revision, hub_params):
            per_source[where] += 1
            turns = to_messages(record)
            why = problem(turns, rules)
            if why is None:
                key = fingerprint(turns)
                why = "duplicate" if key in seen else None
                seen.add(key)
            if why is None:
                ids, mask = tokenize(turns, tokenizer)
                if len(ids) > max_tokens:
                    why = "too_long"
                else:
                    kept.append({"messages": turns, "input_ids": ids, "assistant_mask": mask})
            if why:
                counts[why] += 1
    if not kept:
        raise EdgetuneError(
            f"data.source {', '.join(sources)}: no usable conversation "
            f"(dropped: {dict(counts) or 'none read'}"
            + (f"; no file matches {', '.join(unmatched)}" if unmatched else "")
            + "). Check the paths and the files' format: ShareGPT JSONL "
            '({"messages": [{"role": ..., "content": ...}]}) or alpaca JSON, and the cleaning rules '
            "data.min_reply_chars, data.non_answers and data.blocked_words."
        )
    return kept, {
        "raw": sum(per_source.values()),
        "files": dict(per_source),
        "unmatched": unmatched,
        "dropped": dict(counts),
        "clean": len(kept),
    }
