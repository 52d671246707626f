"""summary.md's section on the other phone runtimes (runtimes.*): each runtime's variant beside
llama.cpp's, measured the same way against the same f16: accuracy with its interval, what it loses
and gains against f16 (McNemar), KLD and same top token (computed in Python from each runtime's
logits), size, speed at the bench stage's threads and peak RAM. Then which file to ship for each
runtime, and where a runtime's own rounding of the base moves the model, the fix: lora.train_on."""

from edgetune.core.config import RecommendParams
from edgetune.core.variants import F16, LORA, MERGED, ONNX, onnx_base_file, runtime_of
from edgetune.report.recommend import shortfall

BUNDLE = "deploy-{runtime}"  # the runtimes' bundle stages' folders, one per type


def runtimes_table(
    runtimes: dict, variants: dict, bench: dict, gguf: str | None, p: RecommendParams, train_on: str
) -> list[str]:
    """`runtimes`: the other runtimes' records; `gguf`: the llama.cpp variant to set beside them;
    `train_on`: the base the adapter was trained on (lora.train_on)."""
    if not runtimes:
        return []
    rows = {**({gguf: variants[gguf]} if gguf in variants else {}), **runtimes}
    lines = [
        "",
        "## Other phone runtimes",
        "",
        f"The same trained model in each runtime, its adapter applied at run time (a name without +lora: merged, "
        f"where the runtime cannot apply it), against {F16} on the same "
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
    return lines + ["", *ship_lines(runtimes, variants[F16], p), *drift_lines(runtimes, p, train_on)]


def ship_lines(runtimes: dict, f16: dict, p: RecommendParams) -> list[str]:
    """Each runtime's file to ship: the smallest within the recommendation's tolerances, else the closest to f16."""
    lines = []
    for runtime in dict.fromkeys(runtime_of(n)[0] for n in runtimes):
        mine = {n: v for n, v in runtimes.items() if runtime_of(n)[0] == runtime}
        close = [n for n, v in mine.items() if shortfall(v, f16, p, "accuracy") is None]
        best = min(close, key=lambda n: mine[n]["model_bytes"]) if close else None
        best = best or min(mine, key=lambda n: mine[n].get("kld_mean", float("inf")))
        why = (
            "the smallest within the recommendation's tolerances"
            if close
            else "none is within tolerance; the closest to f16"
        )
        lines.append(
            f"**To ship in {mine[best].get('runtime', runtime)}:** {best} ({why}), bundled in "
            f"`{BUNDLE.format(runtime=runtime)}/{runtime_of(best)[1]}/`."
        )
    return lines + [""]


def drift_lines(runtimes: dict, p: RecommendParams, train_on: str) -> list[str]:
    """Where a runtime's rounding of the base moves the model past recommend.max_kld: say so, and how
    to train on it where lora.train_on can name that runtime's type (ONNX)."""
    lines = []
    for name, v in runtimes.items():
        own = name.removesuffix(LORA)
        runtime, _ = runtime_of(name)
        if own == train_on:
            lines.append(
                f"The adapter was trained on {own}'s own base (lora.train_on: {own}): {name} is the model trained."
            )
        elif v.get("kld_mean", 0.0) > p.max_kld:
            drift = (
                f"**{name} drifts from f16** (KLD {v['kld_mean']:.4f}, allowed {p.max_kld}): the runtime rounds the base "
                f"a second time, after the adapter was trained on {train_on}'s."
            )
            if runtime in MERGED:
                drift = (
                    f"**{name} drifts from f16** (KLD {v['kld_mean']:.4f}, allowed {p.max_kld}): the runtime cannot apply "
                    "the adapter at run time, so the merged model is rounded, adapter and all. Ship a type with "
                    "more bits, or GGUF's +lora."
                )
            elif runtime == ONNX:
                types = ",".join(runtime_of(n)[1] for n in runtimes if runtime_of(n)[0] == ONNX)
                drift += (
                    f" Train the adapter on the weights it runs: `dvc exp run -S 'runtimes.onnx=[{types}]' "
                    f"-S lora.train_on={own} -S lora.train_on_file={onnx_base_file(runtime_of(name)[1])}` "
                    "(for int4: -S experiment=runtimes-train-on-onnx)."
                )
            else:
                drift += " lora.train_on cannot name this runtime's types yet: ship its closest type, or GGUF."
            lines.append(drift)
    return lines + ([""] if lines else [])


def coreml_table(verified: dict) -> list[str]:
    """Core ML's variants: what was verified without Apple's runtime, and the file to ship."""
    if not verified:
        return []
    lines = [
        "",
        "## Core ML (verified, not run)",
        "",
        "Core ML runs only on Apple's systems, so these files were **not run here, nor on a device**. Verified: "
        "the package's spec, its inputs and outputs, its ops, and each compressed weight against the trained "
        "(merged) model's; and the merged model run in PyTorch with those weights, against f16 on the quality "
        "stage's text (the rounding alone: Core ML's fp16 activations and kernels are not in it).",
        "",
        "| variant | spec | inputs | compressed | weight error mean / max | KLD (its weights) | same top | MB | on a device |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, v in verified.items():
        inputs = ", ".join(f"{k} {'x'.join(f'{lo}..{hi}' if lo != hi else str(lo) for lo, hi in s['ranges'])}"
                           for k, s in v["inputs"].items())  # fmt: skip
        e = v["weight_error"]
        w = v.get("weights_in_pytorch", {})
        quality = f"{w['kld_mean']:.4f} | {100 * w['same_top_token']:.1f}%" if w else " | "
        lines.append(
            f"| {name} | {v['spec_version']} | {inputs} | {v['compressed_tensors']} of {v['matrices']} | "
            f"{100 * e['mean']:.1f}% / {100 * e['max']:.1f}% | {quality} | {v['model_bytes'] / 1e6:.0f} | untested |"
        )
    best = min(
        verified,
        key=lambda n: verified[n].get("weights_in_pytorch", {}).get("kld_mean", verified[n]["weight_error"]["mean"]),
    )
    return lines + ["", f"**To ship in Core ML:** {best} (the closest to the trained model), bundled in "
                    f"`{BUNDLE.format(runtime=runtime_of(best)[0])}/{runtime_of(best)[1]}/` with a Swift recipe.", ""]  # fmt: skip
