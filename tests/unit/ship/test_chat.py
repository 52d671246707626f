"""`edgetune chat` answers a scripted conversation on stdin, with a GGUF file or an HF checkpoint."""

import re
import subprocess
import sys

import pytest

SCRIPT = "你好\n\n/reset\n你好\n/exit\n这一行不该被读到\n"


def chat(model, *options):
    cmd = [
        sys.executable,
        "-m",
        "edgetune.cli",
        "chat",
        str(model),
        "--temperature",
        "0",
        "--max-tokens",
        "6",
        *options,
    ]
    return subprocess.run(cmd, input=SCRIPT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_chat_answers_a_scripted_conversation(kind, tiny_gguf, tiny_model):
    proc = chat(tiny_gguf if kind == "gguf" else tiny_model, "--threads", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith("you> ")] == ["you> 你好", "you> 你好"]
    assert "(new conversation)" in lines and "这一行不该被读到" not in proc.stdout
    replies = re.findall(r"model> (.*?)\n(?=you> |\(new conversation\)|\Z)", proc.stdout, re.S)
    assert len(replies) == 2
    assert replies[0] == replies[1]  # greedy, and /reset cleared the history: the same turn, the same reply
    if kind == "gguf":  # what llama.cpp answers in the GGUF's own template with the same settings
        from llama_cpp import Llama

        llm = Llama(model_path=str(tiny_gguf), n_ctx=256, verbose=False)
        expected = llm.create_chat_completion(
            [{"role": "user", "content": "你好"}], temperature=0, max_tokens=6, repeat_penalty=1.1, top_p=0.9, seed=0
        )
        assert replies[0] == expected["choices"][0]["message"]["content"]


def test_chat_refuses_what_is_not_a_model(tmp_path):
    proc = chat(tmp_path)
    assert (
        proc.returncode != 0
        and str(tmp_path) in proc.stderr
        and "neither a .gguf file nor an HF checkpoint" in proc.stderr
    )
