"""Pictures of a run as PNG files, which open anywhere without a network: in summary.md on GitHub,
in any Markdown viewer, or on their own. (`dvc plots` keeps the same data for `dvc plots diff`.)

  accuracy_vs_size.png   each variant's score against its bytes, the frontier joined
  kld_vs_bits.png        each variant's KL divergence from f16 against its bits per weight
  speed.png              generated tokens/s per variant on the CPU (bench)
  loss.png               training and validation loss against the epoch (dvclive's files)
"""

import csv
from pathlib import Path

from edgetune.core.files import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.grid(alpha=0.3)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # the same figures, the same bytes
    plt.close(fig)


def _label(ax, xy: dict) -> None:
    """Name each point, left to right, above and below in turn: neighbours do not overwrite each other."""
    for i, (name, point) in enumerate(sorted(xy.items(), key=lambda kv: kv[1][0])):
        ax.annotate(name, point, textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -11), fontsize=8)


def accuracy_vs_size(variants: dict, metric: str, frontier: list[str], recommended: str | None, path: Path) -> bool:
    points = {n: v for n, v in variants.items() if v.get("model_bytes") and metric in v}
    if not points:
        return False
    plt, fig, ax = _figure()
    scale = 100 if metric == "accuracy" else 1
    xy = {n: (v["model_bytes"] / 1e6, scale * v[metric]) for n, v in points.items()}
    for name, (x, y) in xy.items():
        ax.scatter(x, y, s=60 if name == recommended else 25, color="tab:red" if name == recommended else "tab:blue")
    _label(ax, xy)
    line = [points[n] for n in frontier if n in points]
    ax.plot(
        [v["model_bytes"] / 1e6 for v in line],
        [scale * v[metric] for v in line],
        color="tab:gray",
        lw=1,
        label="frontier",
    )
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("accuracy (%)" if metric == "accuracy" else "perplexity (lower is better)")
    ax.set_title(f"{metric.capitalize()} against size (red: recommended)")
    ax.legend(loc="lower right" if metric == "accuracy" else "upper right", fontsize=8)
    _save(plt, fig, path)
    return True


def kld_vs_bits(variants: dict, path: Path) -> bool:
    points = {n: v for n, v in variants.items() if "kld_mean" in v and v.get("bits_per_weight")}
    if not points:
        return False
    plt, fig, ax = _figure()
    xy = {n: (v["bits_per_weight"], v["kld_mean"]) for n, v in points.items()}
    for name, (x, y) in xy.items():
        ax.scatter(x, y, color="tab:orange" if name.endswith("+lora") else "tab:blue")
    _label(ax, xy)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (a +lora variant's adapter included)")
    ax.set_ylabel("mean KL divergence from f16")
    ax.set_title("What quantization moves (orange: base + adapter at run time)")
    _save(plt, fig, path)
    return True


def speed(bench: dict, path: Path) -> bool:
    rows = {
        n: v["completion"]["tg_tokens_per_second"] for n, v in bench.get("variants", {}).items() if "completion" in v
    }
    if not rows:
        return False
    plt, fig, ax = _figure()
    names = list(rows)
    ax.barh(
        names, [rows[n] for n in names], color=["tab:orange" if n.endswith("+lora") else "tab:blue" for n in names]
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"generated tokens/s, llama-completion at {bench['threads'][-1]} threads, CPU only")
    ax.set_title("Decode speed (orange: base + adapter at run time)")
    _save(plt, fig, path)
    return True


def _tsv(path: Path) -> dict[int, float]:
    """A dvclive metric file: its step (dvclive counts one per logged row) to the value."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return {int(step): float(value) for step, value in rows[1:]}


def loss_curves(live_dir: Path) -> dict[str, dict[float, float]]:
    """dvclive logs the training loss every train.logging_steps steps and the validation loss at
    each evaluation, each row under its own dvclive step; the epoch logged at that step places it."""
    metrics = live_dir / "plots" / "metrics"
    epoch = _tsv(metrics / "epoch.tsv")
    curves = {"training": _tsv(metrics / "loss.tsv"), "validation": _tsv(metrics / "eval" / "loss.tsv")}
    return {name: {epoch[s]: v for s, v in curve.items() if s in epoch} for name, curve in curves.items()}


def loss(live_dir: Path, path: Path) -> bool:
    curves = loss_curves(live_dir)
    if not curves["training"]:
        return False
    plt, fig, ax = _figure()
    for (name, curve), style in zip(curves.items(), ({"marker": ".", "lw": 1}, {"marker": "o", "lw": 1.5})):
        if curve:
            ax.plot(list(curve), list(curve.values()), label=f"{name} ({len(curve)} points)", **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("Training")
    ax.legend(fontsize=8)
    _save(plt, fig, path)
    return True
