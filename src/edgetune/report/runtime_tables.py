"""summary.md's section on the other phone runtimes (runtimes.*): each runtime's variant beside
llama.cpp's, measured the same way against the same f16: accuracy with its interval, what it loses
and gains against f16 (McNemar), KLD and same top token (computed in Python from each runtime's
logits), size, speed at the bench stage's threads and peak RAM."""

from edgetune.core.variants import F16


def runtimes_table(runtimes: dict, variants: dict, bench: dict, gguf: str | None) -> list[str]:
    """`runtimes`: the other runtimes' records; `gguf`: the llama.cpp variant to set beside them."""
    if not runtimes:
        return []
    rows = {**({gguf: variants[gguf]} if gguf in variants else {}), **runtimes}
    lines = [
        "",
        "## Other phone runtimes",
        "",
        f"The same trained model in each runtime, its adapter applied at run time, against {F16} on the same "
        f"{variants[F16]['n_samples']} test examples. KLD and same top token: the quality stage's text, computed in "
        "Python from each runtime's own logits (for a GGUF, llama-perplexity gives the same figures). tok/s: "
        "prefill/decode of one prompt at the bench stage's largest thread count; RAM: peak resident memory "
        "answering one prompt at the largest context. Not run on a phone here.",
        "",
        "| variant | runtime | accuracy | 95% interval | lost | gained | p | KLD | same top | MB | pp tok/s | tg tok/s | RAM |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in rows.items():
        low, high = v["accuracy_ci95"]
        vs = v.get("vs_f16", {})
        paired = f"{vs['lost']} | {vs['gained']} | {vs['p_value']:.3f}" if vs else " |  | "
        quality = f"{v['kld_mean']:.4f} | {100 * v['same_top_token']:.1f}%" if "kld_mean" in v else " | "
        run = bench.get("variants", {}).get(name, {})
        speed = run.get("completion", {})
        tok = f"{speed['pp_tokens_per_second']:.0f} | {speed['tg_tokens_per_second']:.1f}" if speed else " | "
        peak = run.get("peak_rss_bytes", {})
        ram = f"{max(peak.values()) / 2**30:.2f} GB" if peak else ""
        lines.append(
            f"| {name} | {v.get('runtime', 'llama.cpp')} | {100 * v['accuracy']:.1f} | {100 * low:.1f}–{100 * high:.1f} | "
            f"{paired} | {quality} | {v['model_bytes'] / 1e6:.0f} | {tok} | {ram} |"
        )
    return lines
