"""Stage report: every variant side by side -> metrics.json, summary.md and plot data.

What a person reads first: per variant its size, bits per weight, accuracy, F1, speed, and the
difference to the f16 GGUF, to the untuned model (its fair free-answer accuracy), and to the
classical TF-IDF baseline.
"""

import collections
import json
from pathlib import Path

import click

from . import charts, environment, params
from .errors import EdgetuneError
from .files import check_outputs, write_json, write_text
from .recommend import RecommendParams, recommend
from .significance import accuracy_interval, paired
from .variants import IMATRIX, LORA, QuantizeParams, names

ORDER = ["tfidf", "base", "f16"]  # then the quant variants, largest first
SCALARS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "perplexity",
    "loss",
    "kld_mean",
    "kld_p99",
    "ppl_ratio",
    "same_top_token",
    "n_samples",
    "seconds_per_sample",
    "samples_per_second",
    "prompt_tokens_per_second",
    "model_bytes",
    "bits_per_weight",
    "fallback_tensors",
)


def load_variants(eval_dir: Path, names: list[str]) -> dict[str, dict]:
    """The named variants' results; files of variants no longer in params.yaml are left out."""
    missing = [n for n in names if not (eval_dir / f"{n}.json").is_file()]
    if missing:
        raise EdgetuneError(
            f"{eval_dir}: no results for {', '.join(missing)}. Run the evaluate stages first (`dvc repro`)."
        )
    variants = {n: json.loads((eval_dir / f"{n}.json").read_text()) for n in names}
    variants = {name: v for name, v in variants.items() if "skipped" not in v}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(
        sorted(variants.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), -(kv[1].get("model_bytes") or 0)))
    )


def side_by_side(variants: dict[str, dict]) -> dict[str, dict]:
    """The scalar metrics of each variant, plus per-class scores and the free-answer result."""
    table = {}
    for name, v in variants.items():
        row = {k: v[k] for k in SCALARS if v.get(k) is not None}
        if "per_class" in v:
            row["per_class"] = {c: {k: s[k] for k in ("precision", "recall", "f1")} for c, s in v["per_class"].items()}
        if "uncalibrated" in v:
            row["uncalibrated_accuracy"] = v["uncalibrated"]["accuracy"]
        if "free_answer" in v:
            row["free_answer"] = {k: v["free_answer"][k] for k in ("accuracy", "f1", "unparsed")}
        row |= {k: v[k] for k in ("accuracy_ci95", "vs_f16", "vs_plain") if k in v}
        table[name] = row
    return table


def untuned_accuracy(variants: dict) -> float | None:
    """The untuned model at its fairest: asked freely if it was, else by label scoring."""
    base = variants.get("base")
    if not base:
        return None
    return base.get("free_answer", {}).get("accuracy", base["accuracy"])


def plain_twin(name: str) -> str:
    """The variant quantized without the importance matrix: q4_k_m-imatrix+lora -> q4_k_m+lora."""
    lora = name.endswith(LORA)
    return name.removesuffix(LORA).removesuffix(IMATRIX) + (LORA if lora else "")


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


def lora_table(variants: dict, bench: dict) -> list[str]:
    """Each quant type merged and re-quantized beside its quantized base with the adapter at run time."""
    pairs = [(n.removesuffix(LORA), n) for n in variants if n.endswith(LORA) and n.removesuffix(LORA) in variants]
    if not pairs:
        return []
    metric = "accuracy" if "accuracy" in variants[pairs[0][0]] else "perplexity"
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


def add_quantize_stats(variants: dict, quantize_dir: Path) -> dict[str, dict]:
    """What llama-quantize made of each variant (quantize stage): tensor types and fallbacks."""
    stats = {}
    for name in variants:
        path = quantize_dir / f"{name}.json"
        if path.is_file():
            stats[name] = json.loads(path.read_text())
            variants[name]["fallback_tensors"] = len(stats[name]["fallbacks"])
    return stats


def add_significance(variants: dict, eval_dir: Path) -> None:
    """Each accuracy's 95% interval; each quantized variant against f16, and each -imatrix variant
    against its plain twin, review by review (evaluate's predictions CSVs)."""
    for name, v in variants.items():
        if "accuracy" not in v:
            continue
        v["accuracy_ci95"] = accuracy_interval(v["accuracy"], v["n_samples"])
        mine = eval_dir / f"{name}.csv"
        if name in ORDER or not mine.is_file():
            continue
        for key, reference in (("vs_f16", "f16"), ("vs_plain", plain_twin(name))):
            if reference != name and (eval_dir / f"{reference}.csv").is_file():
                v[key] = paired(eval_dir / f"{reference}.csv", mine)


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
    f16 = variants.get("f16", {}).get("accuracy")
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


def imatrix_table(variants: dict) -> list[str]:
    """Each <type>-imatrix variant beside its plain twin: what the importance matrix bought."""
    pairs = [(plain_twin(n), n) for n in variants if plain_twin(n) != n and plain_twin(n) in variants]
    if not pairs:
        return []
    metric = "accuracy" if "accuracy" in variants[pairs[0][0]] else "perplexity"

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


def dialogue_table(variants: dict, data: dict) -> list[str]:
    """Conversations (data.task: sft): perplexity on the replies of the test split, per variant."""
    f16 = variants.get("f16", {}).get("perplexity")
    lines = [
        f"Test split: {next(iter(variants.values()))['n_samples']} conversations from `{data.get('source', '?')}`. "
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


def summary_markdown(variants: dict, data: dict, train: dict) -> str:
    if data.get("task") == "sft":
        lines = ["# edgetune report", "", *dialogue_table(variants, data)]
        lines += training_table(train, ("train_loss", "eval_loss", "eval_perplexity", "steps", "train_runtime"))
        return "\n".join(lines) + "\n"
    f16 = variants.get("f16", {}).get("accuracy")
    untuned = untuned_accuracy(variants)
    tfidf = variants.get("tfidf", {}).get("accuracy")
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
    if "base" in variants:
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
    variants: dict, frontier: list[str], choice: dict | None, bench: dict, live_dir: Path, folder: Path
) -> str:
    """The PNG charts (charts.py), as a section of summary.md that shows them."""
    drawn = [
        (
            "Accuracy against size",
            "accuracy_vs_size.png",
            charts.accuracy_vs_size(variants, frontier, choice and choice["variant"], folder / "accuracy_vs_size.png"),
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


@click.command("report")
@click.option(
    "--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/eval"), show_default=True
)
@click.option(
    "--quality",
    "quality_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/quality.json"),
    show_default=True,
    help="KL divergence per variant (quality stage), where measured.",
)
@click.option(
    "--quantize-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/quantize"),
    show_default=True,
    help="What llama-quantize made of each variant (quantize stage).",
)
@click.option(
    "--bench",
    "bench_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/bench.json"),
    show_default=True,
    help="Speed and memory per variant (bench stage), where measured.",
)
@click.option(
    "--data-stats",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/data.json"),
    show_default=True,
)
@click.option(
    "--train-metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/train/metrics.json"),
    show_default=True,
    help="dvclive's summary; its folder holds the loss curves.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"), show_default=True)
def report(
    eval_dir: Path,
    quality_file: Path,
    quantize_dir: Path,
    bench_file: Path,
    data_stats: Path,
    train_metrics: Path,
    out: Path,
):
    """Gather every variant's results into OUT/metrics.json, OUT/summary.md and plot data."""
    check_outputs(shared=[out])
    variants = load_variants(eval_dir, [*ORDER, *names(params.load("quantize", QuantizeParams).types)[1:]])
    if quality_file.is_file():
        for name, q in json.loads(quality_file.read_text())["variants"].items():
            variants.get(name, {}).update(q)
    stats = add_quantize_stats(variants, quantize_dir)
    add_significance(variants, eval_dir)
    data = json.loads(data_stats.read_text()) if data_stats.is_file() else {}
    train = json.loads(train_metrics.read_text()) if train_metrics.is_file() else {}
    choice = recommend(variants, params.load("recommend", RecommendParams))
    write_json(out / "metrics.json", {"variants": side_by_side(variants), "recommended": choice, "train": train})
    on_frontier = choice["frontier"] if choice else []
    points = [
        {
            "variant": n,
            "model_mb": v["model_bytes"] / 1e6,
            "accuracy": v["accuracy"],
            "recommended": bool(choice) and n == choice["variant"],
            "frontier": n in on_frontier,
        }
        for n, v in variants.items()
        if v.get("model_bytes") and "accuracy" in v
    ]
    write_json(out / "plots" / "accuracy_vs_size.json", points)
    write_json(
        out / "plots" / "frontier.json", sorted((p for p in points if p["frontier"]), key=lambda p: p["model_mb"])
    )
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
    text = summary_markdown(variants, data, train) + "\n".join(
        [*lora_table(variants, bench), *tensors_table(stats), *imatrix_table(variants), ""]
    )
    if bench:
        text += device_table(bench)
    if choice:
        text += f"\n## Recommended\n\n**{choice['variant']}**: {choice['reason']}\n"
        text += frontier_line(variants, on_frontier)
    text += pictures(variants, on_frontier, choice, bench, train_metrics.parent, out / "plots")
    env = environment.describe()
    write_json(out / "environment.json", env)
    text += f"{environment.FOOTER}{environment.one_line(env)}\n"
    write_text(out / "summary.md", text)
    click.echo(text)
