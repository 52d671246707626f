"""Dialogue data for supervised fine-tuning: ShareGPT and alpaca records -> checked conversations.

to_messages  ShareGPT {"messages": [{"role", "content"}]} (or {"conversations": [{"from",
             "value"}]}) and alpaca {"instruction", "input", "output", "system"?} -> turns
clean        drop invalid records (unknown roles, roles out of order, no reply at the end),
             empty replies, duplicates by their user + assistant text, and conversations
             longer than the token cap; count each
tokenize     the conversation in the model's template, with a mask over the assistant turns:
             the loss falls on the replies only
"""

import collections
import glob
import hashlib
import json
from pathlib import Path

from .errors import EdgetuneError
from .files import read_text

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}


def to_messages(record) -> list[dict] | None:
    """One record as chat turns, or None when it is not a conversation edgetune can read."""
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


def problem(turns: list[dict] | None) -> str | None:
    """Why a conversation cannot be trained on, or None: invalid, or empty_reply."""
    if not turns:
        return "invalid"
    body = turns[1:] if turns[0]["role"] == "system" else turns
    if not body or body[-1]["role"] != "assistant":
        return "invalid"
    if any(t["role"] != ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(body)):
        return "invalid"  # a system turn later on, two user turns in a row, ...
    if any(not t["content"].strip() for t in body if t["role"] == "assistant"):
        return "empty_reply"
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


def read_records(pattern: str) -> list[tuple[str, object]]:
    """(file, record) for every record in the files a pattern names; unreadable lines kept as None."""
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not files:
        raise EdgetuneError(f"data.source `{pattern}`: no file matches. Fix the pattern in params.yaml.")
    records = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise EdgetuneError(f"data.source `{name}`: file not found. Fix the path in params.yaml.")
        text = read_text(path)
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise EdgetuneError(
                    f"{name}: not valid JSON ({e}). Fix it, or write one record a line as .jsonl."
                ) from None
            records += [(name, r) for r in (data if isinstance(data, list) else [data])]
        else:
            for line in text.splitlines():
                if line.strip():
                    try:
                        records.append((name, json.loads(line)))
                    except json.JSONDecodeError:
                        records.append((name, None))  # counted as invalid
    return records


def load_and_clean(sources: list[str], tokenizer, max_tokens: int) -> tuple[list[dict], dict]:
    """Every conversation in `sources`, cleaned and tokenized, with what was dropped and why."""
    counts, per_file = collections.Counter(), collections.Counter()
    seen, kept = set(), []
    for pattern in sources:
        for name, record in read_records(pattern):
            per_file[name] += 1
            turns = to_messages(record)
            why = problem(turns)
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
            f"(dropped: {dict(counts) or 'none read'}). Check the files' format: ShareGPT JSONL "
            '({"messages": [{"role": ..., "content": ...}]}) or alpaca JSON.'
        )
    return kept, {"raw": sum(per_file.values()), "files": dict(per_file), "dropped": dict(counts), "clean": len(kept)}
