"""summary.md's phone section: what a phone's memory lets each variant decode at most, and what
the aarch64 build made of the exported bundle (`make phone-check`, reports/phone.json)."""


def checked_variant(variants: dict, phone: dict) -> str | None:
    """The variant whose files phone-check ran: the same sha256s, or none (an older bundle)."""
    checked = {f["sha256"] for f in phone.get("files", [])}
    for name, v in variants.items():
        if checked and {f["sha256"] for f in v.get("files", [])} == checked:
            return name
    return None


def phone_table(variants: dict, bench: dict, phone: dict, bandwidths: list[float]) -> str:
    """Per variant: bytes read per decoded token, the decode ceilings they allow at each memory
    bandwidth, the x86 decode speed measured here, and the aarch64-vs-x86 KL divergence."""
    runs = {n: v for n, v in bench.get("variants", {}).items() if "bytes_read_per_token" in v}
    if not runs:
        return ""
    checked = checked_variant(variants, phone)
    kv = next(iter(runs.values()))["bytes_read_per_token"]["kv_cache_per_context_token"]
    gbs = " / ".join(f"{b:g}" for b in bandwidths)
    lines = [
        "",
        "## On a phone",
        "",
        "Decoding a token reads every weight once, so a phone's memory bandwidth bounds its decode speed: the "
        f"ceiling is bandwidth ÷ bytes read per token, here at {gbs} GB/s (entry, mid-range, flagship). Bytes: "
        f"the weights and the adapter (of the token embedding one row, unless it is also the output layer); "
        f"the KV cache adds {kv:,} bytes per token of context. *x86 tg*: decode tokens/s measured here "
        f"(llama-completion, {bench['threads'][-1]} threads). *KLD aarch64*: `make phone-check` on the exported "
        "bundle: llama.cpp built for an arm64 phone, run under emulation, against the x86 build on the same files.",
        "",
        f"| variant | MB read per token | decode ceiling tok/s at {gbs} GB/s | x86 tg tok/s | KLD aarch64 vs x86 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in runs.items():
        read = v["bytes_read_per_token"]["weights"] + v["bytes_read_per_token"]["adapter"]
        ceilings = " / ".join(f"{b * 1e9 / read:.0f}" for b in bandwidths)
        kld = f"{phone['kld']['kld_mean']:.4f}" if name == checked else ""
        lines.append(
            f"| {name} | {read / 1e6:.0f} | {ceilings} | {v['completion']['tg_tokens_per_second']:.1f} | {kld} |"
        )
    lines += ["", phone_lines(phone, checked)]
    return "\n".join(lines) + "\n"


def phone_lines(phone: dict, checked: str | None) -> str:
    if not phone:
        return "No phone check yet: `make phone-check` runs the exported bundle on an aarch64 build."
    if checked is None:
        return (
            "reports/phone.json checked other files than any variant of this run (by sha256): run "
            "`make phone-check` on this run's bundle."
        )
    k, a, speed = phone["kld"], phone["answers"], phone["tokens_per_second"]
    text = (
        f"**{checked} on an arm64 CPU's arithmetic.** The pinned llama.cpp built as the bundle's Android recipe "
        f"builds it ({phone['aarch64_build']}); against the x86 build, mean KLD "
        f"{k['kld_mean']:.4f} (99th percentile {k['kld_p99']:.4f}, max {k['kld_max']:.4f}) over {k['tokens_scored']} "
        f"tokens of the test text, the same top token {k['same_top_token']:.1%} of the time; "
        f"{a['same_answer']} of {a['prompts']} test prompts answered identically (greedy)."
    )
    if "same_label" in a:
        fragile = [a["rows"][i] for i in a["fragile"]]
        text += (
            f" Label margins ({a['margin']}) differ between the builds by at most {a['max_margin_difference']:.3f}; "
            f"{a['same_label']} of {a['prompts']} labels agree, and {len(fragile)} "
            f"{'prompt sits' if len(fragile) == 1 else 'prompts sit'} closer to the boundary than that, so could be "
            "answered otherwise on a phone"
            + "".join(
                f"{'; ' if i else ': '}“{r['text'][:24]}…” ({r['margin_x86']:+.3f})" for i, r in enumerate(fragile)
            )
            + "."
        )
    return text + (
        f" Emulated speed, not a phone's: prompt {speed['aarch64']['prompt']:.1f} tok/s on aarch64 under qemu "
        f"against {speed['x86_64']['prompt']:.0f} natively."
    )
