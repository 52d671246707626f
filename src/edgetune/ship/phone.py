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

import contextlib
import json
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import click
import numpy as np

from edgetune.core import tasks
from edgetune.core.config import PhoneParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_checksums, read_jsonl, sha256_file, write_json
from edgetune.core.labels import log_softmax
from edgetune.core.outputs import check_outputs
from edgetune.core.params import reads
from edgetune.core.prompts import plain_text
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files
from edgetune.measure.kld import parse as parse_kld


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
    common = [*files.lora_flag, "-f", text, "-c", p.ctx, "--chunks", p.chunks, "-t", p.threads]
    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "x86.kld"
        start = time.perf_counter()
        llamacpp.run(
            [llamacpp.tool("llama-perplexity"), "-m", files.gguf, *common, "--kl-divergence-base", logits],
            f"llama-perplexity (x86) on {files.gguf}",
        )
        middle = time.perf_counter()
        arm = llamacpp.run(
            [*llamacpp.arm_tool("llama-perplexity"), "-m", files.gguf, *common]
            + ["--kl-divergence-base", logits, "--kl-divergence"],
            f"llama-perplexity (aarch64, qemu) on {files.gguf}",
        )
    result = parse_kld(arm, "llama-perplexity (aarch64)")
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
        "seconds": {"x86_64": middle - start, "aarch64": time.perf_counter() - middle},  # with loading the model
    }


def render(rows: list[dict], template: str, llm) -> list[list[int]]:
    """Each row's conversation up to its answer, through the bundle's chat template, as tokens."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def piece(token: int) -> str:  # a model without a BOS token says -1
        return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    special = {"bos_token": piece(llm.token_bos()), "eos_token": piece(llm.token_eos())}
    prompts = []
    for r in rows:
        turns = r["messages"][:-1] if r["messages"][-1]["role"] == "assistant" else r["messages"]
        text = render_jinja_template([turns], chat_template=template, add_generation_prompt=True, **special)[0][0]
        prompts.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    return prompts


def x86_answers(llm, prompts: list[list[int]], max_new: int) -> tuple[list[dict], dict]:
    """Greedy answers and first-answer-token log-probs of the x86 build (libllama through the
    bindings), one prompt after another, reusing the cached prefix it shares with the last one
    as llama-server does."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    out, evaluated, prompt_time, decode_time, decoded = [], 0, 0.0, 0.0, 0
    for tokens in prompts:
        cached = llm.input_ids[: llm.n_tokens].tolist()
        common = next((i for i, (a, b) in enumerate(zip(cached, tokens)) if a != b), min(len(cached), len(tokens)))
        llm.n_tokens = min(common, len(tokens) - 1)  # at least the last prompt token is computed again
        start = time.perf_counter()
        evaluated += len(tokens) - llm.n_tokens
        llm.eval(tokens[llm.n_tokens :])
        first = log_softmax(logits())
        prompt_time += time.perf_counter() - start
        answer, token = [], int(np.argmax(first))
        start = time.perf_counter()
        while not llama_cpp.llama_vocab_is_eog(vocab, token) and len(answer) < max_new:
            answer.append(token)
            if len(answer) < max_new:
                llm.eval([token])
                decoded += 1
                token = int(np.argmax(logits()))
        decode_time += time.perf_counter() - start
        out.append({"tokens": answer, "first": first})
    return out, {"prompt": evaluated / prompt_time, "decode": decoded / decode_time if decoded else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def arm_server(files: Files, ctx: int, threads: int):
    """llama-server of the aarch64 build under qemu, on the bundle's files: its address."""
    port = free_port()
    cmd = [*llamacpp.arm_tool("llama-server"), "-m", files.gguf, *files.lora_flag, "-c", ctx, "-np", 1]
    cmd += ["-t", threads, "-tb", threads, "-fa", "off", "--no-webui", "--host", "127.0.0.1", "--port", port]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server cannot block on it
        proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 900  # loading a 0.5B model under emulation takes a minute
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode("utf-8", "replace")[-1500:]
                    raise EdgetuneError(f"llama-server (aarch64, qemu) on {files.gguf} did not start:\n{tail}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def arm_answers(
    files: Files, prompts: list[list[int]], ctx: int, max_new: int, labels: list[int], is_end, p: PhoneParams
):
    """Greedy answers of the aarch64 build and the log-probs of the label tokens at the first
    answer token (softmax of the raw logits, as the server computes them for temperature < 0)."""
    out, timings = [], {"prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0, "predicted_ms": 0.0}

    def complete(url: str, tokens: list[int], n_predict: int, n_probs: int) -> dict:
        body = {
            "prompt": tokens,
            "n_predict": n_predict,
            "temperature": -1,  # greedy
            "n_probs": n_probs,
            "cache_prompt": True,  # the template and instruction every prompt starts with: computed once
            "return_tokens": True,
        }
        request = urllib.request.Request(
            f"{url}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=900) as r:
            return json.loads(r.read())

    with arm_server(files, ctx, p.threads) as url:
        for tokens in prompts:
            reply = complete(url, tokens, max_new, 20)
            for k in timings:
                timings[k] += reply["timings"][k]
            top = {t["id"]: t["logprob"] for t in reply["completion_probabilities"][0]["top_logprobs"]}
            if any(t not in top for t in labels):  # a label outside the top 20: ask for the whole vocabulary
                whole = complete(url, tokens, 1, 1 << 30)["completion_probabilities"][0]["top_logprobs"]
                top = {t["id"]: t["logprob"] for t in whole}
            answer = [t for t in reply["tokens"] if not is_end(t)]  # the server keeps the end-of-turn token
            out.append({"tokens": answer, "labels": [top[t] for t in labels]})
    return out, {
        "prompt": 1000 * timings["prompt_n"] / timings["prompt_ms"],
        "decode": 1000 * timings["predicted_n"] / timings["predicted_ms"] if timings["predicted_ms"] else None,
    }


def label_tokens(llm, words: dict[str, str]) -> list[int]:
    """The first token of each label word: a greedy answer decides between these."""
    first = [llm.tokenize(w.encode("utf-8"), add_bos=False, special=False)[0] for w in words.values()]
    if len(set(first)) < len(first):
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
