"""dvc.yaml lists, for every stage, the edgetune modules that compute its outputs, so that
`dvc repro` reruns a stage whose code changed. Read from the code itself: the stage's module and
every module it imports, directly or not, except the plumbing every stage shares."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "edgetune"
# Messages, reading params.yaml, writing and checking files, finding the llama.cpp tools, consent
# for a model's code, the hub's timeouts: a change to these would rerun every stage, training
# included, and changes no result.
PLUMBING = {"errors", "params", "files", "llamacpp", "remote_code", "hub"}


def imported(module: str) -> set[str]:
    """edgetune modules `module` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def code_of(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen and m not in PLUMBING:
            seen.add(m)
            todo += imported(m)
    return seen


def test_every_stage_depends_on_the_modules_that_make_its_outputs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert len(stages) >= 14
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        if stage.get("always_changed"):
            continue  # it runs at every `dvc repro`, whatever its code
        command = stage["cmd"].split()[1]  # edgetune <command> ...
        needed = {f"src/edgetune/{m}.py" for m in code_of(command.replace("-", "_"))}
        missing = needed - set(stage["deps"])
        assert not missing, (
            f"dvc.yaml: stage {name} runs `edgetune {command}` but does not depend on {sorted(missing)}"
        )
        listed = {d for d in stage["deps"] if d.startswith("src/edgetune/") and d.endswith(".py")}
        assert listed <= needed | {f"src/edgetune/{m}.py" for m in PLUMBING}, f"{name}: depends on code it never runs"


def test_export_declares_every_params_section_its_model_card_prints():
    from edgetune.export import CARD_SECTIONS

    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["export"]["params"]
    assert {"export", *CARD_SECTIONS} <= set(declared)
