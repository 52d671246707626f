"""KL divergence of one GGUF variant's next-token distributions against a reference's, on the
same held-out text, with llama.cpp's own llama-perplexity: the reference's logits go to a
temporary file (`--kl-divergence-base`), then the variant is scored against them. The quality
stage compares a quant with f16; phone-check compares one bundle on two builds (x86, aarch64).
Every saved token costs a full vocabulary row (152k wide for Qwen): the text is kept short.
"""

import re
import tempfile
import time
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files

# llama-perplexity's summary lines -> metric names
PATTERNS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
    "ppl_f16": r"Mean PPL\(base\)\s*:\s*([\d.]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)",
    "kld_mean": r"Mean\s+KLD:\s*([-\d.]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*([-\d.]+)",
    "kld_max": r"Maximum KLD:\s*([-\d.]+)",
    "same_top_token": r"Same top p:\s*([\d.]+)",
}


def parse(output: str, where: str) -> dict:
    found = {name: re.search(pattern, output) for name, pattern in PATTERNS.items()}
    missing = [name for name, m in found.items() if m is None]
    if missing:
        raise EdgetuneError(
            f"{where}: llama-perplexity printed no {', '.join(missing)}; its output ends with:\n{output[-800:]}"
        )
    values = {name: float(m.group(1)) for name, m in found.items()}
    values["same_top_token"] /= 100
    return values


def kl_divergence(
    reference: Files,
    files: Files,
    text: Path,
    ctx: int,
    chunks: int,
    threads: int | None,
    names: tuple[str, str],
    tools: tuple[list, list] | None = None,
) -> tuple[dict, dict]:
    """The llama-perplexity figures of `files` against `reference` (named `names` in errors), and
    the seconds of each run. `tools`: the two llama-perplexity command lines, where they differ
    (another build); by default this machine's."""
    tools = tools or ([llamacpp.tool("llama-perplexity")],) * 2
    common = ["-f", text, "-c", ctx, "--chunks", chunks] + (["-t", threads] if threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "reference.kld"
        start = time.perf_counter()
        llamacpp.run(
            [*tools[0], "-m", reference.gguf, *reference.lora_flag, *common, "--kl-divergence-base", logits],
            f"llama-perplexity on {names[0]}",
        )
        middle = time.perf_counter()
        out = llamacpp.run(
            [
                *tools[1],
                "-m",
                files.gguf,
                *files.lora_flag,
                *common,
                "--kl-divergence-base",
                logits,
                "--kl-divergence",
            ],
            f"llama-perplexity --kl-divergence on {names[1]}",
        )
    return parse(out, names[1]), {"reference": middle - start, "variant": time.perf_counter() - middle}
