"""Stage report: every variant side by side -> metrics.json, summary.md and plot data.

What a person reads first: per variant its size, bits per weight, accuracy, F1, speed, and the
difference to the f16 GGUF, to the untuned model (its fair free-answer accuracy), and to the
classical TF-IDF baseline.
"""

import hashlib
import json
from pathlib import Path

import click

from edgetune.core import tasks
from edgetune.core.files import write_json, write_text
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.variants import COREML, ORDER, names, runtime_names
from edgetune.report import dialogue_tables, environment, tables
from edgetune.report.gather import gather, gather_bench, read_each
from edgetune.report.phone_tables import phone_table
from edgetune.report.recommend import recommend
from edgetune.report.runtime_tables import coreml_table, runtimes_table
from edgetune.report.tables import (
    device_table,
    frontier_line,
    imatrix_table,
    lora_table,
    pictures,
    tensors_table,
)

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
    "adapter_bytes",
    "bits_per_weight",
    "fallback_tensors",
    "runtime",  # who ran it: the bundles of the other runtimes name it
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
        row |= {k: v[k] for k in ("accuracy_ci95", "vs_f16", "vs_plain", "files") if k in v}
        table[name] = row
    return table


def made_from(folder: Path) -> str:
    """The model and data as the inputs stage pinned them: what a rerun must read to agree."""
    pins = {what: folder / f"{what}.json" for what in ("model", "data")}
    lines = [f"- {what} {pin_line(json.loads(f.read_text()))}" for what, f in pins.items() if f.is_file()]
    return "\n## Made from\n\n" + "\n".join(lines) + "\n" if lines else ""


def pin_line(pin: dict) -> str:
    """A pin as the report states it: the source, and what fixes its content."""
    parts = [f"{len(pin['files'])} file(s), sha256 {fold(pin['files'])}"] if pin["files"] else []
    parts += [f"{p['package']} {p['version']}" for p in pin["packages"]]  # their files are the version's
    parts += [
        f"hub {h['hub']}@{h['revision']}" + ("" if h["pinned"] else " (a branch or tag: a rerun may read other bytes)")
        for h in pin["hub"]
    ]
    source = pin["source"] if isinstance(pin["source"], str) else ", ".join(pin["source"])
    return f"`{source}`: " + "; ".join(parts)


def fold(files: list[dict]) -> str:
    """One short digest for a list of files: the first 12 hex digits, or of their digests together."""
    if len(files) == 1:
        return files[0]["sha256"][:12]
    return hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()[:12]


def write_size_plots(variants: dict, choice: dict | None, plots: Path) -> None:
    """Accuracy against size for every variant that has both, and the frontier among them (dvc plots)."""
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
    write_json(plots / "accuracy_vs_size.json", points)
    write_json(plots / "frontier.json", sorted((p for p in points if p["frontier"]), key=lambda p: p["model_mb"]))


@click.command("report")
@click.option(
    "--eval-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/eval"), show_default=True
)
@click.option(
    "--quality-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/quality"),
    show_default=True,
    help="KL divergence of each variant against f16 (quality stages), one file per variant.",
)
@click.option(
    "--quantize-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/quantize"),
    show_default=True,
    help="What llama-quantize made of each variant (quantize stage).",
)
@click.option(
    "--bench-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/bench"),
    show_default=True,
    help="Speed and memory of each variant (bench stages), one file per variant.",
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
@click.option(
    "--phone",
    "phone_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("reports/phone.json"),
    show_default=True,
    help="`make phone-check` on the exported bundle: the aarch64 build against x86 (when there is one).",
)
@click.option(
    "--inputs",
    "inputs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports/inputs"),
    show_default=True,
    help="the inputs stage's pins of the model and data.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"), show_default=True)
@reads("recommend", "quantize.types", "runtimes", "lora.train_on", "data.task", "phone.bandwidths")
def report(
    eval_dir: Path,
    quality_dir: Path,
    quantize_dir: Path,
    bench_dir: Path,
    data_stats: Path,
    train_metrics: Path,
    phone_file: Path,
    inputs_dir: Path,
    out: Path,
    params,
):
    """Gather every variant's results into OUT/metrics.json, OUT/summary.md and plot data."""
    check_outputs(shared=[out])
    metric = tasks.METRIC[params.data.task]  # what tells the variants apart
    ggufs = names(params.quantize.types)
    variants, stats = gather(eval_dir, quality_dir, quantize_dir, [*ORDER, *ggufs[1:]], ggufs)
    data = json.loads(data_stats.read_text()) if data_stats.is_file() else {}
    train = json.loads(train_metrics.read_text()) if train_metrics.is_file() else {}
    # the other runtimes' variants: measured and reported beside the GGUFs, never the bundle's file
    others = runtime_names(params.runtimes.listed())
    runtimes, _ = gather(eval_dir, quality_dir, quantize_dir, others, others)
    verified = read_each(quality_dir, [f"{COREML}-{t}" for t in params.runtimes.coreml])  # Core ML: not run here
    choice = recommend(variants, params.recommend, metric)
    write_json(
        out / "metrics.json",
        {
            "variants": side_by_side(variants),
            **({"runtimes": side_by_side(runtimes)} if runtimes else {}),
            **({"coreml": verified} if verified else {}),
            "recommended": choice,
            "train": train,
        },
    )
    on_frontier = choice["frontier"] if choice else []
    write_size_plots(variants, choice, out / "plots")
    bench = gather_bench(read_each(bench_dir, ggufs))
    head = dialogue_tables if metric == "perplexity" else tables  # conversations, or labelled texts
    text = head.summary_markdown(variants, data, train) + "\n".join(
        [*lora_table(variants, metric, bench), *tensors_table(stats), *imatrix_table(variants, metric), ""]
    )
    if runtimes:
        shipped = choice["variant"] if choice else None
        beside = read_each(bench_dir, [*others, *([shipped] if shipped else [])])
        text += "\n".join(
            [
                *runtimes_table(
                    runtimes, variants, gather_bench(beside), shipped, params.recommend, params.lora.train_on
                ),
                "",
            ]
        )
    text += "\n".join(coreml_table(verified))
    if bench:
        phone = json.loads(phone_file.read_text()) if phone_file.is_file() else {}
        text += device_table(bench) + phone_table(variants, bench, phone, params.phone.bandwidths)
    if choice:
        text += f"\n## Recommended\n\n**{choice['variant']}**: {choice['reason']}\n"
        text += frontier_line(variants, on_frontier)
    text += made_from(inputs_dir)
    text += pictures(variants, metric, on_frontier, choice, bench, train_metrics.parent, out / "plots")
    env = environment.describe()
    write_json(out / "environment.json", env)
    text += f"{environment.FOOTER}{environment.one_line(env)}\n"
    write_text(out / "summary.md", text)
    click.echo(text)
