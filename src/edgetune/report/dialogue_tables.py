"""The summary's head for conversations (data.task: sft): perplexity per variant, each variant's
greedy replies to the same held-out prompts, training, and what cleaning removed rule by rule."""

from edgetune.core.variants import F16
from edgetune.report.tables import quality_cells, training_table


def dialogue_table(variants: dict, data: dict) -> list[str]:
    """Conversations (data.task: sft): perplexity on the replies of the test split, per variant."""
    f16 = variants.get(F16, {}).get("perplexity")
    lines = [
        f"Test split: {next(iter(variants.values()))['n_samples']} conversations from "
        f"{', '.join(f'`{s}`' for s in data.get('source', ['?']))}. "
        "Perplexity and loss on the assistant replies only; Δ f16 in percent of the f16 perplexity.",
        "",
        "| variant | MB | bits/weight | perplexity | loss | KLD | PPL ratio | s/sample | tok/s | Δ f16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        delta = f"{100 * (v['perplexity'] / f16 - 1):+.2f}%" if f16 else ""
        lines.append(
            f"| {name} | {v['model_bytes'] / 1e6:.0f} | {v['bits_per_weight']:.2f} | {v['perplexity']:.3f} | "
            f"{v['loss']:.4f} | {quality_cells(v)} | {v['seconds_per_sample']:.3f} | {v['prompt_tokens_per_second']:.0f} | {delta} |"
        )
    return lines


def cell(text: str) -> str:
    """Free text inside a markdown table cell."""
    return " ".join(text.strip().splitlines()).replace("|", "\\|") or "(nothing)"


def replies_section(variants: dict) -> list[str]:
    """Each variant's greedy reply to the same held-out prompts, so a person reads what tuning changed."""
    answered = {name: v["replies"] for name, v in variants.items() if v.get("replies")}
    if not answered:
        return []
    lines = ["", "## Replies to held-out prompts", "", "Greedy, from each GGUF; *reference* is the data's reply."]
    for i, example in enumerate(next(iter(answered.values()))):
        lines += ["", f"**{i + 1}. {cell(example['prompt'])}**", "", "| variant | reply |", "|---|---|"]
        lines.append(f"| *reference* | {cell(example['reference'])} |")
        lines += [
            f"| {name} | {cell(replies[i]['reply'])} |" for name, replies in answered.items() if i < len(replies)
        ]
    return lines


def dialogue_data(data: dict) -> list[str]:
    """What cleaning removed, rule by rule, and what each split holds."""
    cleaning = data.get("cleaning", {})
    if not cleaning:
        return []
    dropped = cleaning.get("dropped", {})
    lines = ["", "## Data", "", f"{cleaning['raw']} conversations read; {cleaning['clean']} kept.", ""]
    lines += ["| removed by | conversations |", "|---|---:|"]
    lines += [f"| {rule} | {n} |" for rule, n in sorted(dropped.items(), key=lambda kv: -kv[1])] or ["| nothing | 0 |"]
    lines += ["", "| split | conversations | tokens | reply tokens |", "|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {s['n']} | {s['tokens']} | {s['assistant_tokens']} |"
        for name, s in data.get("splits", {}).items()
    ]
    return lines


def summary_markdown(variants: dict, data: dict, train: dict) -> str:
    lines = ["# edgetune report", "", *dialogue_table(variants, data), *replies_section(variants)]
    lines += training_table(train, ("train_loss", "eval_loss", "eval_perplexity", "steps", "train_runtime"))
    lines += dialogue_data(data)
    return "\n".join(lines) + "\n"
