"""Never lose the user's work: an output path that would replace what edgetune did not write is
refused before any work, and a model's own code runs only with the user's consent."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOOD, failed, make_tiny_model, report_files, run, set_params, write_jsonl


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (.git included) with the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def repo(workdir):
    """The working directory as a git repository with a commit and a file of the user's."""
    (workdir / "notes.md").write_text("the user's notes\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "start"],
    ):
        subprocess.run(["git", *args], cwd=workdir, check=True)
    return workdir


@pytest.fixture
def export_inputs(repo, tiny_model, tiny_gguf):
    """What export reads: the report's files, a merged checkpoint and the f16 GGUF it ships."""
    shutil.copytree(tiny_model, repo / "models" / "merged")
    shutil.copy(tiny_gguf, repo / "models" / "tiny-f16.gguf")
    return [*report_files(Path("reports"), Path("models/tiny-f16.gguf")), "--merged", "models/merged"]


@pytest.mark.parametrize("out", [".", "", ".."])
def test_export_refuses_the_working_directory_and_above(repo, export_inputs, out):
    before = snapshot(repo)
    result = run("export", *export_inputs, "--out", out)
    assert failed(result, "working directory, a folder above it or the home folder")
    assert snapshot(repo) == before  # .git, the notes and every input as they were


@pytest.mark.parametrize("out", ["/", "~", "~/.."])
def test_the_root_and_home_folders_are_never_outputs(workdir, out):
    """Checked on the function alone: a command that failed to refuse would delete the machine's files."""
    from edgetune.core.errors import EdgetuneError
    from edgetune.core.outputs import check_outputs

    for kind in ("files", "folders", "shared"):
        with pytest.raises(EdgetuneError, match="the working directory, a folder above it or the home folder"):
            check_outputs(**{kind: [os.path.expanduser(out)]})


def test_export_writes_a_bundle_it_may_replace_and_nothing_else(repo, export_inputs):
    """The bundle carries the marker; a second export replaces it; a folder of the user's is refused."""
    assert run("export", *export_inputs, "--out", "deploy").exit_code == 0
    first = snapshot(repo / "deploy")
    assert {".edgetune", "tiny-f16.gguf", "SHA256SUMS", "llama-server.sh", "README.md"} <= set(first)
    result = run("export", *export_inputs, "--out", "deploy")
    assert result.exit_code == 0, result.output
    assert snapshot(repo / "deploy") == first
    assert not [p for p in repo.iterdir() if p.name.endswith(".tmp")]

    (repo / "mine").mkdir()
    (repo / "mine" / "thesis.tex").write_text("years of work\n")
    before = snapshot(repo)
    assert failed(run("export", *export_inputs, "--out", "mine"), "mine", "holds files edgetune did not write")
    assert snapshot(repo) == before


@pytest.fixture
def adapter(workdir, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model.save_pretrained(workdir / "adapter-made")
    return workdir / "adapter-made"


def test_merge_refuses_a_folder_that_holds_its_inputs_or_the_users_files(repo, tiny_model, adapter):
    shutil.copytree(tiny_model, repo / "models" / "base")
    shutil.copytree(adapter, repo / "models" / "adapter")
    (repo / "models" / "gguf").mkdir()
    (repo / "models" / "gguf" / "model-q4_k_m.gguf").write_bytes(b"a file of the user's")
    before = snapshot(repo)
    result = run("merge", "--base", "models/base", "--adapter", "models/adapter", "--out", "models")
    assert failed(result, "output `models` holds the input `models/base`")
    result = run("merge", "--base", "models/base", "--adapter", "models/adapter", "--out", "models/gguf")
    assert failed(result, "models/gguf", "holds files edgetune did not write")
    assert snapshot(repo) == before
    result = run("merge", "--base", "models/base", "--adapter", "models/adapter", "--out", "models/merged")
    assert result.exit_code == 0, result.output
    assert (repo / "models" / "merged" / ".edgetune").is_file() and snapshot(repo / "models" / "gguf") == {
        "model-q4_k_m.gguf": before["models/gguf/model-q4_k_m.gguf"]
    }


def test_quantize_refuses_to_overwrite_its_source(workdir, tiny_gguf):
    source = workdir / "tiny-f16.gguf"
    shutil.copy(tiny_gguf, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = run("quantize", "--model", source, "--type", "q8_0", "--out", source, "--stats", workdir / "s.json")
    assert failed(result, "tiny-f16.gguf", "is the input")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    assert not (workdir / "s.json").exists()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from edgetune.core.files import atomic_path
from edgetune.core.outputs import atomic_dir
out = Path(sys.argv[2])
if sys.argv[1] == "dir":
    with atomic_dir(out) as tmp:
        (tmp / "train.jsonl").write_text("from the run that was killed")
        os.kill(os.getpid(), signal.SIGKILL)
with atomic_path(out, ".gguf") as tmp:
    tmp.write_bytes(b"half a GGUF")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_prepare_leaves_the_splits_of_one_run(workdir, tiny_model):
    """All splits land in one rename: a kill mid-write leaves the last run's three files; the next
    run clears what the killed one left and replaces the folder it made."""
    set_params(workdir, data={"source": str(write_jsonl(workdir / "a.jsonl", GOOD)), "max_test": 4, "max_val": 4})
    assert run("prepare", "--model", tiny_model, "--out", "out", "--stats", "stats.json").exit_code == 0
    before = snapshot(workdir / "out")
    assert set(before) == {".edgetune", "train.jsonl", "val.jsonl", "test.jsonl"}
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, "dir", "out"], cwd=workdir)
    assert killed.returncode == -signal.SIGKILL
    assert snapshot(workdir / "out") == before
    assert len(list(workdir.glob(".out.*.tmp"))) == 1  # what the kill left behind

    set_params(workdir, data={"seed": 1})
    assert run("prepare", "--model", tiny_model, "--out", "out", "--stats", "stats.json").exit_code == 0
    after = snapshot(workdir / "out")
    assert set(after) == set(before) and after["train.jsonl"] != before["train.jsonl"]
    assert not list(workdir.glob(".out.*"))


def test_a_leftover_temporary_gguf_is_cleared_by_the_next_run(workdir, tiny_gguf):
    out = workdir / "tiny-q8_0.gguf"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, "file", out], cwd=workdir)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name.startswith(".tiny-q8_0.gguf.") for p in workdir.glob(".*.tmp")] == [True]
    result = run("quantize", "--model", tiny_gguf, "--type", "q8_0", "--out", out, "--stats", workdir / "s.json")
    assert result.exit_code == 0, result.output
    assert not list(workdir.glob(".*.tmp")) and out.stat().st_size > 0


def test_outputs_take_the_mode_the_umask_gives(workdir, tiny_gguf):
    old = os.umask(0o022)
    try:
        result = run("quantize", "--model", tiny_gguf, "--type", "q8_0", "--out", "q.gguf", "--stats", "s.json")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert [oct((workdir / f).stat().st_mode & 0o777) for f in ("q.gguf", "s.json")] == ["0o644", "0o644"]


def remote_code_model(tokenizer, folder: Path) -> Path:
    """A checkpoint whose config points at its own Python code; importing that code leaves a trace."""
    make_tiny_model(tokenizer, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"open({str(folder.parent / 'code-ran')!r}, 'w').write('it ran')\n"
        "from transformers import Qwen2Config as EvilConfig, Qwen2ForCausalLM as EvilModel\n"
    )
    return folder


@pytest.mark.parametrize("stage", ["train", "merge", "prepare", "chat"])
def test_a_models_own_code_needs_consent(workdir, qwen_tokenizer, prepared, adapter, stage):
    model = remote_code_model(qwen_tokenizer, workdir / "remote" / "model")
    commands = {
        "train": ["train", "--model", model, "--data", prepared, "--out", "adapter", "--live", "live"],
        "merge": ["merge", "--base", model, "--adapter", adapter, "--out", "merged"],
        "prepare": ["prepare", "--model", model, "--out", "again", "--stats", "again.json"],
        "chat": ["chat", model],
    }
    fix = "--trust-remote-code" if stage == "chat" else "model.trust_remote_code: true"
    assert failed(run(*commands[stage]), "config.json", "auto_map", fix)
    assert not (workdir / "remote" / "code-ran").exists()
    assert not {"adapter", "live", "merged", "again"} & {p.name for p in workdir.iterdir()}


def test_a_bad_param_keeps_the_checkpoints_of_an_interrupted_run(workdir, tiny_model, prepared):
    checkpoints = workdir / "adapter" / "checkpoints"
    (checkpoints / "checkpoint-3").mkdir(parents=True)
    (checkpoints / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"three steps of training")
    (checkpoints / "fingerprint.json").write_text('{"fingerprint": "of the interrupted run"}')
    (workdir / "adapter" / ".edgetune").write_text("written by `edgetune train`\n")
    before = snapshot(workdir / "adapter")
    set_params(workdir, lora={"top_layers": 7})  # the tiny model has 2 layers: known only once it is loaded
    result = run("train", "--model", tiny_model, "--data", prepared, "--out", "adapter", "--live", "live")
    assert failed(result, "lora.top_layers is 7", "2 decoder layers")
    assert snapshot(workdir / "adapter") == before


@pytest.fixture
def own_model(workdir, tiny_model) -> Path:
    """A copy of the tiny model: a command that failed to refuse would write into it."""
    return Path(shutil.copytree(tiny_model, workdir / "model"))


def test_a_file_output_never_lands_on_or_in_an_input(workdir, own_model, prepared):
    """baseline's result over the split it reads; prepare's data stats into the model it reads."""
    cases = [
        (["baseline", "--data", prepared, "--out", prepared / "train.jsonl"], "is inside the input"),
        (
            ["prepare", "--model", own_model, "--out", "again", "--stats", own_model / "tokenizer_config.json"],
            "is inside the input",
        ),
        (
            ["prepare", "--model", own_model, "--out", "again", "--stats", "again/stats.json"],
            "inside the output folder",
        ),
    ]
    before = snapshot(workdir)
    for command, needle in cases:
        assert failed(run(*command), needle)
        assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "marker, needle",
    [
        (
            "written by `edgetune train --out`; only that command replaces this folder",
            "written by `edgetune train --out`",
        ),
        ("written by `edgetune train`; it replaces this folder when it runs again", "written by `edgetune train`"),
        ("written by `edgetune prepare --stats`", "written by `edgetune prepare --stats`"),
    ],
)
def test_a_folder_another_command_wrote_is_not_replaced(workdir, own_model, reviews, marker, needle):
    """The marker names the command and option that wrote the folder; only they replace it."""
    adapter = workdir / "models" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"a trained adapter")
    (adapter / ".edgetune").write_text(marker + "\n")
    before = snapshot(workdir)
    set_params(workdir, data={"source": str(write_jsonl(workdir / "reviews.jsonl", reviews))})
    result = run("prepare", "--model", own_model, "--out", adapter, "--stats", "stats.json")
    assert failed(result, needle, "only that command replaces it", "edgetune prepare --out")
    assert snapshot(workdir) == {**before, **snapshot_of(workdir, "params.yaml", "reviews.jsonl")}


def snapshot_of(root: Path, *names) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in names}


def test_the_marker_names_the_command_and_option(workdir, prepared):
    assert (prepared / ".edgetune").read_text().startswith("written by `edgetune prepare --out`")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--out", "~/data", "--stats", "stats.json"], "begins with `~`"),
        (["--out", "out", "--stats", "~/stats.json"], "begins with `~`"),
        (["--out", "out", "--stats", "blocker/stats.json"], "the file"),  # a file stands where a folder goes
        (["--out", "blocker/out", "--stats", "stats.json"], "the file"),
    ],
)
def test_a_refused_output_is_refused_before_any_work(workdir, own_model, reviews, args, needle):
    (workdir / "blocker").write_text("a file of the user's\n")
    set_params(workdir, data={"source": str(write_jsonl(workdir / "reviews.jsonl", reviews))})
    before = snapshot(workdir)
    assert failed(run("prepare", "--model", own_model, *args), needle)
    assert snapshot(workdir) == before and not (workdir / "~").exists() and not (workdir / "out").exists()


@pytest.mark.parametrize("stage", ["prepare", "quantize"])
def test_two_commands_writing_one_output_at_once(workdir, own_model, tiny_gguf, reviews, stage):
    """Two runs into one output: one finishes, the other is told the output is busy, and what is
    left is the first one's whole result."""
    set_params(workdir, data={"source": str(write_jsonl(workdir / "reviews.jsonl", reviews)), "max_test": 8})
    commands = {
        "prepare": lambda n: ["prepare", "--model", own_model, "--out", "out", "--stats", f"stats{n}.json"],
        "quantize": lambda n: [
            "quantize",
            "--model",
            tiny_gguf,
            "--type",
            "q8_0",
            "--out",
            "out",
            "--stats",
            f"stats{n}.json",
        ],
    }
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "edgetune.cli", *map(str, commands[stage](n))],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (1, 2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read()) for p in both]
    assert sorted(code != 0 for code, _ in results) == [False, True], results
    (winner, _), (_, (_, told)) = sorted(zip(both, results), key=lambda r: r[1][0] != 0)
    assert "is being written by another edgetune command right now" in told and "Traceback" not in told
    assert not list(workdir.glob(".out*"))  # no temporary file or folder of either run is left
    n = both.index(winner) + 1
    assert (workdir / f"stats{n}.json").is_file() and not (workdir / f"stats{3 - n}.json").exists()
    alone = workdir / "alone"  # the same command alone, for what one whole run leaves
    alone.mkdir()
    shutil.copy(workdir / "params.yaml", alone)
    command = [sys.executable, "-m", "edgetune.cli", *map(str, commands[stage](1))]
    assert subprocess.run(command, cwd=alone, capture_output=True).returncode == 0
    assert outcome(alone) == outcome(workdir)


def outcome(root: Path) -> dict[str, str]:
    out = root / "out"
    return snapshot(out) if out.is_dir() else snapshot_of(root, "out")
