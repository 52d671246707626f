"""dvc.yaml lists, for every stage, the edgetune modules that compute its outputs, so that
`dvc repro` reruns a stage whose code changed. Read from the code itself: the stage's module and
every module it imports, directly or not, except the plumbing every stage shares."""

import importlib.util

import yaml
from conftest import REPO

from edgetune.cli import main

_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

# Messages, reading and checking params.yaml (its schema and rules), writing and checking files, finding the llama.cpp tools, consent
# for a model's code, the hub's timeouts: a change to these would rerun every stage, training
# included, and changes no result. Packages' __init__ files hold only their docstrings.
PLUMBING = {
    "core.errors",
    "core.params",
    "core.config",
    "core.rules",
    "core.files",
    "core.outputs",
    "core.weights",
    "gguf.llamacpp",
    "core.remote_code",
    "core.hub",
}
GRAPH = import_graph.imports()


def path_of(module: str) -> str:
    return str(import_graph.modules()[module].relative_to(REPO))


def code_of(command: str) -> set[str]:
    """The modules that `edgetune COMMAND` runs, plumbing and package docstrings left out."""
    start = main.commands[command].callback.__module__.removeprefix("edgetune.")
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen and m not in PLUMBING:
            seen.add(m)
            todo += GRAPH[m]
    return {m for m in seen if not import_graph.modules()[m].name == "__init__.py"}


def test_every_stage_depends_on_the_modules_that_make_its_outputs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert len(stages) >= 14
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        if stage.get("always_changed"):
            continue  # it runs at every `dvc repro`, whatever its code
        command = stage["cmd"].split()[1]  # edgetune <command> ...
        needed = {path_of(m) for m in code_of(command)}
        missing = needed - set(stage["deps"])
        assert not missing, (
            f"dvc.yaml: stage {name} runs `edgetune {command}` but does not depend on {sorted(missing)}"
        )
        listed = {d for d in stage["deps"] if d.startswith("src/edgetune/") and d.endswith(".py")}
        assert listed <= needed | {path_of(m) for m in PLUMBING}, f"{name}: depends on code it never runs"


def test_export_declares_every_params_section_its_model_card_prints():
    from edgetune.ship.export import CARD_SECTIONS

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]["params"]
    assert {"export", *CARD_SECTIONS} <= set(declared)
