"""The sections of summary.md as Markdown, each from the variants' results: the report stage
gathers the results (report.py), these turn them into what a person reads."""

import collections
from pathlib import Path

from edgetune.core.variants import BASE, F16, LORA, TFIDF, plain_twin
from edgetune.report import charts


def untuned_accuracy(variants: dict) -> float | None:
    """The untuned model at its fairest: asked freely if it was, else by label scoring."""
    base = variants.get(BASE)
    if not base:
        return None
    return base.get("free_answer", {}).get("accuracy", base["accuracy"])


def device_table(bench: dict) -> str:
    """Speed per thread count (llama-bench; llama-completion for a variant with an adapter) and
    llama-completion's peak memory per context, per variant."""
    threads = "/".join(map(str, bench["threads"]))
    contexts = list(next(iter(bench["variants"].values()))["peak_rss_bytes"])
    lines = [
        "",
        "## On a device",
        "",
        f"llama.cpp's own tools; tokens/s of llama-bench at {threads} threads (pp{bench['prompt_tokens']}, "
        f"tg{bench['gen_tokens']}); llama-bench takes no adapter, so a +lora variant is timed by llama-completion "
        f"at {bench['threads'][-1]} threads (*). RAM: the peak resident memory of llama-completion answering one prompt, "
        "the RAM it needs at that context.",
        "",
        "| variant | pp tok/s | tg tok/s | " + " | ".join(f"RAM at context {c}" for c in contexts) + " |",
        "|---|---:|---:|" + "---:|" * len(contexts),
    ]
    for name, v in bench["variants"].items():
        speeds = v.get("speed") or [v["completion"]]
        star = "" if "speed" in v else "*"
        pp = "/".join(f"{s['pp_tokens_per_second']:.0f}" for s in speeds) + star
        tg = "/".join(f"{s['tg_tokens_per_second']:.1f}" for s in speeds) + star
        ram = " | ".join(f"{v['peak_rss_bytes'][c] / 2**30:.2f} GB" for c in contexts)
        lines.append(f"| {name} | {pp} | {tg} | {ram} |")
    return "\n".join(lines) + "\n"


def lora_table(variants: dict, metric: str, bench: dict) -> list[str]:
    """Each quant type merged and re-quantized beside its quantized base with the adapter at run time."""
    pairs = [(n.removesuffix(LORA), n) for n in variants if n.endswith(LORA) and n.removesuffix(LORA) in variants]
    if not pairs:
        return []
    speed = {n: v["completion"] for n, v in bench.get("variants", {}).items() if "completion" in v}
    costs = bench.get("adapter_cost", {})
    lines = [
        "",
        "## The adapter at run time",
        "",
        "Each type two ways: the merged model quantized (a second rounding of what was trained), and the base "
        "quantized once with the 16-bit GGUF LoRA applied at run time (`--lora`), the adapter trained on that "
        f"base's own weights (lora.train_on). tok/s: llama-completion at {bench.get('threads', ['?'])[-1]} threads, "
        "both ways; *adapter cost*: the +lora variant against its base alone, the same way.",
        "",
        f"| type | {metric} merged | +lora | KLD merged | +lora | MB merged | +lora | tg tok/s merged | +lora | "
        "adapter cost pp | tg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def show(v, key, fmt):
        return format(v[key], fmt) if key in v else ""

    for merged, lora in pairs:
        a, b = variants[merged], variants[lora]
        score = [f"{100 * v['accuracy']:.1f}" if metric == "accuracy" else f"{v['perplexity']:.3f}" for v in (a, b)]
        tg = [show(speed.get(n, {}), "tg_tokens_per_second", ".1f") for n in (merged, lora)]
        cost = costs.get(lora, {})
        pp_cost, tg_cost = (f"{100 * cost[k]:.0f}%" if k in cost else "" for k in ("pp_cost", "tg_cost"))
        lines.append(
            f"| {merged} | {score[0]} | {score[1]} | {show(a, 'kld_mean', '.4f')} | {show(b, 'kld_mean', '.4f')} | "
            f"{a['model_bytes'] / 1e6:.0f} | {b['model_bytes'] / 1e6:.0f} | {tg[0]} | {tg[1]} | {pp_cost} | {tg_cost} |"
        )
    return lines


def significance_table(variants: dict) -> list[str]:
    """Accuracy intervals, and what each quantized file loses and gains against f16."""
    if not any("vs_f16" in v for v in variants.values()):
        return []
    lines = [
        "",
        "## Is the difference real?",
        "",
        f"Accuracy with its 95% (Wilson) interval on the {next(iter(variants.values()))['n_samples']} test examples; "
        "each quantized file against f16 on the same examples: those it gets wrong that f16 gets right (*lost*) "
        "and the reverse (*gained*). *p* is McNemar's exact test: the chance of a split at least this lopsided "
        "if the two files were equally good.",
        "",
        "| variant | accuracy | 95% interval | Δ f16 | lost | gained | p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    f16 = variants.get(F16, {}).get("accuracy")
    for name, v in variants.items():
        low, high = v["accuracy_ci95"]
        vs = v.get("vs_f16")
        paired_cells = f"{vs['lost']} | {vs['gained']} | {vs['p_value']:.3f}" if vs else " |  | "
        lines.append(
            f"| {name} | {100 * v['accuracy']:.1f} | {100 * low:.1f}–{100 * high:.1f} | "
            f"{fmt_delta(v['accuracy'], f16)} | {paired_cells} |"
        )
    return lines


def tensors_table(stats: dict[str, dict]) -> list[str]:
    """Per quant variant: the tensor types the file holds and the tensors that fell back."""
    if not stats:
        return []
    lines = [
        "",
        "## What each file holds",
        "",
        "Tensors by type, and those whose width the wanted type's blocks do not divide: llama-quantize "
        "gives them another type (`reports/quantize/<variant>.json` names them).",
        "",
        "| variant | bits/weight | tensors by type | fell back |",
        "|---|---:|---|---|",
    ]
    for name, st in stats.items():
        types = ", ".join(f"{t} {e['tensors']}" for t, e in st["tensor_types"].items())
        moves = collections.Counter(f"{f['wanted']}→{f['got']}" for f in st["fallbacks"])
        fell = f"{len(st['fallbacks'])} ({', '.join(f'{k} {n}' for k, n in moves.items())})" if moves else "0"
        if st.get("copied"):  # the source already was of this type: its quantizer's choices are not known here
            fell = f"the {st['source_type']} source file itself, byte for byte"
        lines.append(f"| {name} | {st['bits_per_weight']:.2f} | {types} | {fell} |")
    return lines


def imatrix_table(variants: dict, metric: str) -> list[str]:
    """Each <type>-imatrix variant beside its plain twin: what the importance matrix bought."""
    pairs = [(plain_twin(n), n) for n in variants if plain_twin(n) != n and plain_twin(n) in variants]
    if not pairs:
        return []

    def show(x, sign=""):  # accuracy in points, perplexity as it is
        return f"{100 * x:{sign}.1f}" if metric == "accuracy" else f"{x:{sign}.3f}"

    lines = [
        "",
        "## Importance matrix",
        "",
        f"Each type quantized plainly and with the importance matrix (llama-imatrix on the training text): "
        f"{metric} on the test split ({'points' if metric == 'accuracy' else 'lower is better'}), *p* (McNemar's exact test, as above), and mean KLD from f16.",
        "",
        f"| type | {metric} | with imatrix | Δ | p | KLD | with imatrix |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for plain, matrixed in pairs:
        a, b = variants[plain], variants[matrixed]
        kld = [f"{v['kld_mean']:.4f}" if "kld_mean" in v else "" for v in (a, b)]
        p = f"{b['vs_plain']['p_value']:.3f}" if "vs_plain" in b else ""
        lines.append(
            f"| {plain} | {show(a[metric])} | {show(b[metric])} | {show(b[metric] - a[metric], '+')} | {p} | {kld[0]} | {kld[1]} |"
        )
    return lines


def frontier_line(variants: dict, names: list[str]) -> str:
    """The accuracy-vs-bytes frontier in words, smallest first."""

    def point(v):
        score = f"{100 * v['accuracy']:.1f}%" if "accuracy" in v else f"perplexity {v['perplexity']:.3f}"
        return f"{v['model_bytes'] / 1e6:.0f} MB, {score}"

    steps = " → ".join(f"{n} ({point(variants[n])})" for n in names)
    return f"\nThe frontier, smallest first (each scores better than every smaller variant): {steps}.\n"


def quality_cells(v: dict) -> str:
    """Mean KL divergence from f16 and the perplexity ratio (quality stage), blank where not measured."""
    if "kld_mean" not in v:
        return " | "
    return f"{v['kld_mean']:.4f} | {v['ppl_ratio']:.4f}"


def fmt_delta(value, ref) -> str:
    return "" if value is None or ref is None else f"{100 * (value - ref):+.1f}"


def training_table(train: dict, keys: tuple[str, ...]) -> list[str]:
    keep = {k: train[k] for k in keys if k in train}
    if not keep:
        return []
    return [
        "",
        "## Training",
        "",
        "| " + " | ".join(keep) + " |",
        "|" + "---:|" * len(keep),
        "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in keep.values()) + " |",
    ]


def summary_markdown(variants: dict, data: dict, train: dict) -> str:
    """The summary's head for labelled texts (dialogue_tables.py has the one for conversations)."""
    f16 = variants.get(F16, {}).get("accuracy")
    untuned = untuned_accuracy(variants)
    tfidf = variants.get(TFIDF, {}).get("accuracy")
    lines = [
        "# edgetune report",
        "",
        f"Test split: {next(iter(variants.values()))['n_samples']} examples from `{data.get('source', '?')}`. "
        "Accuracy by label scoring, with label offsets fitted on the validation split (*raw*: without); "
        "*free* is the greedy answer parsed for the label word (the untuned model's fair score). Deltas in points.",
        "",
        "| variant | MB | bits/weight | accuracy | raw | F1 | free | KLD | PPL ratio | s/sample | prompt tok/s | Δ f16 | Δ untuned | Δ tfidf |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        mb = f"{v['model_bytes'] / 1e6:.0f}" if v.get("model_bytes") else ""
        bpw = f"{v['bits_per_weight']:.2f}" if v.get("bits_per_weight") else ""
        free = v.get("free_answer")
        free_cell = f"{100 * free['accuracy']:.1f} ({free['unparsed']} unparsed)" if free else ""
        tps = f"{v['prompt_tokens_per_second']:.0f}" if v.get("prompt_tokens_per_second") else ""
        raw = f"{100 * v['uncalibrated']['accuracy']:.1f}" if "uncalibrated" in v else ""
        lines.append(
            f"| {name} | {mb} | {bpw} | {100 * v['accuracy']:.1f} | {raw} | {100 * v['f1']:.1f} | {free_cell} | {quality_cells(v)} | "
            f"{v['seconds_per_sample']:.3f} | {tps} | {fmt_delta(v['accuracy'], f16)} | "
            f"{fmt_delta(v['accuracy'], untuned)} | {fmt_delta(v['accuracy'], tfidf)} |"
        )
    if BASE in variants:
        lines += [
            "",
            "*base* is the untuned model; its label-scoring accuracy is unfair to it (it starts its "
            "answer with other words), so Δ untuned uses its free-answer accuracy.",
        ]
    lines += significance_table(variants)
    lines += training_table(
        train, ("train_loss", "eval_loss", "eval_accuracy", "steps", "chosen_step", "train_runtime", "tokens_seen")
    )
    if data.get("splits"):
        lines += [
            "",
            "## Data",
            "",
            "| split | examples | classes | median prompt tokens | truncated |",
            "|---|---:|---|---:|---:|",
        ]
        for name, s in data["splits"].items():
            lines.append(
                f"| {name} | {s['n']} | {s['classes']} | {s.get('prompt_tokens', {}).get('median', '')} | {s['truncated']} |"
            )
    return "\n".join(lines) + "\n"


def pictures(
    variants: dict, metric: str, frontier: list[str], choice: dict | None, bench: dict, live_dir: Path, folder: Path
) -> str:
    """The PNG charts (charts.py), as a section of summary.md that shows them."""
    drawn = [
        (
            f"{metric.capitalize()} against size",
            "accuracy_vs_size.png",
            charts.accuracy_vs_size(
                variants, metric, frontier, choice and choice["variant"], folder / "accuracy_vs_size.png"
            ),
        ),
        (
            "KL divergence against bits per weight",
            "kld_vs_bits.png",
            charts.kld_vs_bits(variants, folder / "kld_vs_bits.png"),
        ),
        ("Decode speed", "speed.png", charts.speed(bench, folder / "speed.png")),
        ("Training and validation loss", "loss.png", charts.loss(live_dir, folder / "loss.png")),
    ]
    shown = [f"![{title}](plots/{name})" for title, name, ok in drawn if ok]
    return "\n## Pictures\n\n" + "\n".join(shown) + "\n" if shown else ""
