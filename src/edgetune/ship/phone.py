"""Command phone-check: the exported bundle on a phone's arithmetic.

Phones run arm64, and llama.cpp's arm kernels round differently from its x86 ones. The pinned
llama.cpp, cross-built for aarch64 as a phone runs it (armv8.2-a with the dot-product
instructions; `make phone-setup`), runs the bundle exactly as exported under qemu-aarch64, beside
the x86 build on the same files:

  kld      llama-perplexity on both: the aarch64 build's next-token distributions against the
           x86 build's on held-out text (the test split), mean KLD and same top token
  answers  the first N test prompts through the bundle's own chat template: each build's greedy
           answer and, for labelled texts, the label margin at the answer (log P(first label) -
           log P(second label), first tokens): aarch64 llama-server against x86 libllama
  speed    prompt and decode tokens/s of both (emulated: nothing like a phone's speed)

A review whose margin is smaller than the largest difference between the builds could answer
otherwise on a phone: the check lists those. Results go to reports/phone.json, which the report's
device table reads for the variant whose files it checked (matched by sha256).

    make phone-check        # cross-builds once, then: edgetune phone-check --bundle deploy
"""

import re
import tempfile
import time
from pathlib import Path

import click

from edgetune.core import tasks
from edgetune.core.config import PhoneParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_checksums, read_jsonl, sha256_file, write_json
from edgetune.core.labels import first_tokens
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import plain_text
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files
from edgetune.runtimes.llamacpp import kld
from edgetune.ship.phone_answers import arm_answers, render, x86_answers


def read_bundle(folder: Path) -> tuple[Files, str, dict[str, str]]:
    """The model and adapter the bundle runs (its Modelfile's FROM and ADAPTER), its chat template,
    and its SHA256SUMS (name -> sha256), every file checked against them."""
    need = [folder / n for n in ("Modelfile", "SHA256SUMS", "chat_template.jinja")]
    for path in need:
        if not path.is_file():
            raise EdgetuneError(f"{path}: not found; is {folder} a bundle written by `edgetune export`?")
    sums = read_checksums(need[1])
    for name, digest in sums.items():
        if not (folder / name).is_file() or sha256_file(folder / name) != digest:
            raise EdgetuneError(f"{folder / name}: missing or not the file SHA256SUMS names; export it again.")
    run = dict(re.findall(r"^(FROM|ADAPTER) \./(.+)$", need[0].read_text(), re.M))
    if "FROM" not in run:
        raise EdgetuneError(f"{need[0]}: no `FROM ./<file>.gguf` line; export the bundle again.")
    for name in run.values():  # only files SHA256SUMS vouches for: plain names, checked above
        if name not in sums:
            raise EdgetuneError(f"{need[0]}: runs ./{name}, which SHA256SUMS does not list; export the bundle again.")
    files = Files(folder / run["FROM"], folder / run["ADAPTER"] if "ADAPTER" in run else None)
    return files, need[2].read_text(), sums


def kl_divergence(files: Files, text: Path, p: PhoneParams) -> dict:
    """llama-perplexity of the aarch64 build against the x86 build's logits, same files and text."""
    result, seconds = kld.kl_divergence(
        files,
        files,
        text,
        p.ctx,
        p.chunks,
        p.threads,
        (f"{files.gguf} (x86)", f"{files.gguf} (aarch64, qemu)"),
        ([llamacpp.tool("llama-perplexity")], llamacpp.arm_tool("llama-perplexity")),
    )
    return {
        "ctx": p.ctx,
        "chunks": p.chunks,
        "tokens_scored": p.chunks * (p.ctx - p.ctx // 2 - 1),  # llama-perplexity scores a chunk's second half
        "kld_mean": result["kld_mean"],
        "kld_p99": result["kld_p99"],
        "kld_max": result["kld_max"],
        "same_top_token": result["same_top_token"],
        "ppl_x86": result["ppl_f16"],  # the reference's perplexity, in the tool's own words PPL(base)
        "ppl_aarch64": result["ppl"],
        "seconds": {"x86_64": seconds["reference"], "aarch64": seconds["variant"]},  # with loading the model
    }


def label_tokens(llm, words: dict[str, str]) -> list[int]:
    """The first token of each label word: a greedy answer decides between these."""
    first = first_tokens(lambda w: llm.tokenize(w.encode("utf-8"), add_bos=False, special=False), words.values())
    if first is None:
        raise EdgetuneError(
            f"params.yaml: data.labels {words} start with the same token; phone-check compares the labels' first "
            "tokens. Choose label words that differ from their first character."
        )
    return first


def compare_answers(rows, x86, arm, words: dict[str, str] | None, labels: list[int], llm) -> dict:
    """Both builds' answers side by side; for labelled texts the margins and which are fragile."""

    def text(tokens: list[int]) -> str:
        return llm.detokenize(tokens).decode("utf-8", "replace")

    result = {"prompts": len(rows), "same_answer": sum(a["tokens"] == b["tokens"] for a, b in zip(x86, arm))}
    table = [
        {"text": r.get("text", ""), "answer_x86": text(a["tokens"]), "answer_aarch64": text(b["tokens"])}
        for r, a, b in zip(rows, x86, arm)
    ]
    if words:
        first, second = list(words)[:2]
        for row, r, a, b in zip(table, rows, x86, arm):
            row["label"] = r["label"]
            row["margin_x86"] = float(a["first"][labels[0]] - a["first"][labels[1]])
            row["margin_aarch64"] = b["labels"][0] - b["labels"][1]
        widest = max(abs(r["margin_aarch64"] - r["margin_x86"]) for r in table)
        flipped = [i for i, r in enumerate(table) if (r["margin_x86"] > 0) != (r["margin_aarch64"] > 0)]
        fragile = [i for i, r in enumerate(table) if abs(r["margin_x86"]) <= widest]
        result.update(
            margin=f"log P({words[first]}) - log P({words[second]}) at the first answer token",
            same_label=len(table) - len(flipped),
            max_margin_difference=widest,
            fragile=fragile,  # closer to the boundary than the builds differ: could answer otherwise on a phone
            disagreements_explained=set(flipped) <= set(fragile),
        )
    result["rows"] = table
    return result


@click.command("phone-check")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("deploy"),
    show_default=True,
    help="The exported bundle (export stage).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("data/processed/test.jsonl"),
    show_default=True,
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("reports/phone.json"), show_default=True
)
@reads("phone", "data.task", "data.labels")
def phone_check(bundle: Path, data: Path, out: Path, params):
    """Run BUNDLE on an aarch64 build of the pinned llama.cpp under qemu, beside the x86 build:
    KL divergence, the answers and label margins of test prompts, and speed, into OUT."""
    import llama_cpp

    p, task = params.phone, params.data.task
    files, template, sums = read_bundle(bundle)
    check_outputs(inputs=[data, *files.paths], files=[out])
    files.check()  # llama-cpp-python crashes on a LoRA made for another model
    rows = tasks.check_rows(read_jsonl(data)[: p.prompts], task, data)
    words = params.data.labels if task == "classify" else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "held_out.txt"
        text.write_text(plain_text(read_jsonl(data)), encoding="utf-8")
        click.echo(f"KL divergence of the aarch64 build against x86 on {p.chunks} chunks of {p.ctx} tokens ...")
        kld = kl_divergence(files, text, p)
    tokenizer = llama_cpp.Llama(model_path=str(files.gguf), vocab_only=True, verbose=False)
    prompts = render(rows, template, tokenizer)
    ctx = max(map(len, prompts)) + p.max_answer_tokens + 8  # both builds' context: the same KV cache shape
    llm = llama_cpp.Llama(
        model_path=str(files.gguf),
        lora_path=str(files.lora) if files.lora else None,
        n_ctx=ctx,
        n_threads=p.threads,
        n_threads_batch=p.threads,
        flash_attn=False,
        verbose=False,
    )
    labels = label_tokens(llm, words) if words else []
    click.echo(f"{len(prompts)} prompts through the bundle's template: x86, then aarch64 (llama-server, qemu) ...")
    x86, x86_speed = x86_answers(llm, prompts, p.max_answer_tokens)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arm, arm_speed = arm_answers(
        files, prompts, ctx, p.max_answer_tokens, labels, lambda t: llama_cpp.llama_vocab_is_eog(vocab, t), p
    )
    answers = compare_answers(rows, x86, arm, words, labels, llm)
    result = {
        "bundle": bundle.name,
        "files": [{"name": f.name, "sha256": sums[f.name]} for f in files.paths],  # checked by read_bundle
        "aarch64_build": "llama.cpp cross-built for armv8.2-a+dotprod (static, no OpenMP), run under qemu-aarch64",
        "kld": kld,
        "answers": answers,
        "tokens_per_second": {  # answering the prompts
            "note": "emulated: qemu translates every arm instruction; a phone runs these kernels natively, "
            "far faster. Compare the builds' answers here, not their speed.",
            "x86_64": x86_speed,
            "aarch64": arm_speed,
        },
        "threads": p.threads,
        "seconds": time.perf_counter() - started,
    }
    write_json(out, result)
    click.echo(summary_line(result))


def summary_line(r: dict) -> str:
    k, a = r["kld"], r["answers"]
    line = (
        f"aarch64 vs x86 on {k['tokens_scored']} tokens: mean KLD {k['kld_mean']:.4f} (max {k['kld_max']:.4f}), "
        f"same top token {k['same_top_token']:.1%}; {a['same_answer']}/{a['prompts']} greedy answers identical"
    )
    if "same_label" in a:
        line += (
            f"; {a['same_label']}/{a['prompts']} labels agree, margins differ by at most "
            f"{a['max_margin_difference']:.3f}, fragile (closer to the boundary than that): {len(a['fragile'])}"
        )
    return line + f" ({r['seconds']:.0f} s)"
