"""The stages' results, gathered once into one record per variant that the report's tables,
charts and recommendation read and none of them changes: its evaluation, its quality figures
against f16, how many tensors llama-quantize fell back on, its accuracy's interval and its paired
tests against f16 and its plain twin."""

import json
from pathlib import Path
from types import MappingProxyType

from edgetune.core.errors import EdgetuneError
from edgetune.core.variants import F16, ORDER, plain_twin
from edgetune.measure.significance import accuracy_interval, paired

QUALITY_SETTINGS = ("variant", "reference", "ctx", "chunks")  # the quality stage's, not the variant's


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


def read_each(folder: Path, variants: list[str]) -> dict[str, dict]:
    """FOLDER/<variant>.json of each variant that has one (a stage per variant wrote them)."""
    return {v: json.loads((folder / f"{v}.json").read_text()) for v in variants if (folder / f"{v}.json").is_file()}


def gather_bench(runs: dict[str, dict]) -> dict:
    """The bench stages' results as one table: the settings they share, each variant's figures,
    and the adapter's cost on each +lora variant."""
    if not runs:
        return {}
    first = next(iter(runs.values()))
    return {
        **{k: first[k] for k in ("threads", "prompt_tokens", "gen_tokens")},
        "variants": {
            v: {k: r[k] for k in ("completion", "peak_rss_bytes", "speed", "bytes_read_per_token") if k in r}
            for v, r in runs.items()
        },
        "adapter_cost": {v: r["adapter_cost"] for v, r in runs.items() if "adapter_cost" in r},
    }


def quantize_stats(names: list[str], quantize_dir: Path) -> dict[str, dict]:
    """What llama-quantize made of each variant (quantize stage): tensor types and fallbacks."""
    return {
        n: json.loads((quantize_dir / f"{n}.json").read_text())
        for n in names
        if (quantize_dir / f"{n}.json").is_file()
    }


def significance(name: str, v: dict, eval_dir: Path) -> dict:
    """The accuracy's 95% interval; a quantized variant against f16, and an -imatrix variant
    against its plain twin, review by review (evaluate's predictions CSVs)."""
    if "accuracy" not in v:
        return {}
    found = {"accuracy_ci95": accuracy_interval(v["accuracy"], v["n_samples"])}
    mine = eval_dir / f"{name}.csv"
    if name in ORDER or not mine.is_file():
        return found
    for key, reference in (("vs_f16", F16), ("vs_plain", plain_twin(name))):
        if reference != name and (eval_dir / f"{reference}.csv").is_file():
            found[key] = paired(eval_dir / f"{reference}.csv", mine)
    return found


def gather(eval_dir: Path, quality_dir: Path, quantize_dir: Path, names: list[str], ggufs: list[str]):
    """Each variant's record, read-only, in the report's order; and llama-quantize's stats of each."""
    evaluated = load_variants(eval_dir, names)
    quality, stats = read_each(quality_dir, ggufs), quantize_stats(list(evaluated), quantize_dir)
    records = {}
    for name, v in evaluated.items():
        record = {**v, **{k: x for k, x in quality.get(name, {}).items() if k not in QUALITY_SETTINGS}}
        if name in stats:
            record["fallback_tensors"] = len(stats[name]["fallbacks"])
        records[name] = MappingProxyType({**record, **significance(name, record, eval_dir)})
    return records, stats
