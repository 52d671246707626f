"""Which GGUF to ship: the smallest variant that stays close enough to f16.

Close enough means, against the f16 GGUF on the same test split: accuracy no more than
`recommend.accuracy_tolerance` lower (for conversations: perplexity no more than
`recommend.perplexity_tolerance` higher, relative), and a mean KL divergence of the next-token
distributions no larger than `recommend.max_kld` where it was measured. f16 itself always
qualifies, so there is always an answer.
"""

from edgetune.core.config import RecommendParams
from edgetune.core.variants import F16, NOT_SHIPPED


def shortfall(v: dict, f16: dict, p: RecommendParams, metric: str) -> str | None:
    """Why a variant is not close enough to f16 by `metric` (accuracy or perplexity), or None when it is."""
    if metric == "accuracy":
        lost = f16["accuracy"] - v["accuracy"]
        if lost > p.accuracy_tolerance + 1e-9:
            vs = v.get("vs_f16")  # the report's review-by-review comparison, where it made one
            paired = f"; {vs['lost']} examples lost and {vs['gained']} gained, p = {vs['p_value']:.3f}" if vs else ""
            return f"loses {100 * lost:.1f} points of accuracy (allowed {100 * p.accuracy_tolerance:.1f}{paired})"
    elif v["perplexity"] > f16["perplexity"] * (1 + p.perplexity_tolerance):
        return f"perplexity {v['perplexity']:.3f} vs {f16['perplexity']:.3f} (allowed +{100 * p.perplexity_tolerance:.0f}%)"
    if v.get("kld_mean", 0.0) > p.max_kld:
        return f"mean KLD {v['kld_mean']:.4f} (allowed {p.max_kld})"
    return None


def frontier(candidates: dict[str, dict], metric: str) -> list[str]:
    """The accuracy-vs-bytes frontier, smallest first: each variant on it scores better than every
    smaller one (accuracy higher, or for conversations perplexity lower)."""

    def score(v):
        return v["accuracy"] if metric == "accuracy" else -v["perplexity"]

    names, best = [], None
    for name in sorted(candidates, key=lambda n: candidates[n]["model_bytes"]):
        if best is None or score(candidates[name]) > best:
            names.append(name)
            best = score(candidates[name])
    return names


def recommend(variants: dict[str, dict], p: RecommendParams, metric: str) -> dict | None:
    """The recommended variant among f16 and the quant types by `metric` (tasks.METRIC), with the reason in words."""
    f16 = variants.get(F16)
    if not f16:
        return None
    candidates = {n: v for n, v in variants.items() if n not in NOT_SHIPPED and v.get("model_bytes")}
    verdicts = {n: shortfall(v, f16, p, metric) for n, v in candidates.items()}
    name = min((n for n, why in verdicts.items() if why is None), key=lambda n: candidates[n]["model_bytes"])
    v = candidates[name]
    score = (
        f"accuracy {100 * v['accuracy']:.1f} vs f16 {100 * f16['accuracy']:.1f}"
        if metric == "accuracy"
        else f"perplexity {v['perplexity']:.3f} vs f16 {f16['perplexity']:.3f}"
    )
    kld = f", mean KLD {v['kld_mean']:.4f}" if "kld_mean" in v else ""
    reason = (
        f"{name} ({v['model_bytes'] / 1e6:.0f} MB, {100 * v['model_bytes'] / f16['model_bytes']:.0f}% of f16) is "
        f"the smallest variant within tolerance: {score}{kld}."
    )
    smaller = [f"{n} {why}" for n, why in verdicts.items() if why and candidates[n]["model_bytes"] < v["model_bytes"]]
    if smaller:
        reason += " Smaller ones fall short: " + "; ".join(smaller) + "."
    return {
        "variant": name,
        "reason": reason,
        "rejected": {n: why for n, why in verdicts.items() if why},
        "frontier": frontier(candidates, metric),
    }
