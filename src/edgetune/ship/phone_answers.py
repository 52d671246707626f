"""Each build's answers to the bundle's test prompts, for phone-check: the x86 build through
libllama (the bindings), the aarch64 build as llama-server under qemu; greedy answers, the label
tokens' log-probs at the first answer token, and tokens/s."""

import contextlib
import json
import socket
import subprocess
import tempfile
import time
import urllib.request

import numpy as np

from edgetune.core.config import PhoneParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.labels import log_softmax
from edgetune.gguf import llamacpp
from edgetune.gguf.files import Files


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
