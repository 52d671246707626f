"""README.md's pipeline chart is `dvc dag --md`, as it prints it now, and names every stage of dvc.yaml."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BEGIN = "<!-- dvc dag --md: begin -->\n"
END = "<!-- dvc dag --md: end -->"


def dvc() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


@pytest.fixture(scope="module")
def chart() -> str:
    done = subprocess.run(
        [dvc(), "dag", "--md"],
        cwd=REPO,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("```mermaid\n"), done.stdout[:200]
    return done.stdout


def readme_block(text: str) -> str:
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README.md needs {BEGIN.strip()} and {END} once each"
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def lookup(expression, params: dict):
    """A foreach's value: a list or dict as written, or `${a.b}` read from vars and params.yaml."""
    if not isinstance(expression, str):
        return expression
    found = re.fullmatch(r"\$\{\s*([\w.-]+)\s*\}", expression)
    assert found, f"foreach {expression!r}: only a literal or one ${{name}} is understood here"
    value = params
    for key in found[1].split("."):
        value = value[key]
    return value


def stage_names() -> list[str]:
    """Every stage of dvc.yaml as dvc names it: a foreach stage once per item, `name@item` (`name@key`
    for a dict, `name@index` for a list of non-scalars)."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text()) or {}
    for entry in pipeline.get("vars", []):
        if isinstance(entry, dict):
            params = {**params, **entry}
    names = []
    for name, stage in pipeline["stages"].items():
        assert "matrix" not in stage, f"{name}: matrix stages are not expanded by this test yet"
        if "foreach" not in stage:
            names.append(name)
            continue
        items = lookup(stage["foreach"], params)
        if isinstance(items, dict):
            keys = list(items)
        else:
            keys = [item if isinstance(item, (str, int, float, bool)) else index for index, item in enumerate(items)]
        # over an empty list (runtimes.onnx: [], a runtime switched off) dvc makes no stage
        names.extend(f"{name}@{key}" for key in keys)
    return names


def test_readme_chart_is_dvc_dag(chart):
    block = readme_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block == chart, "README.md's pipeline chart is out of date: run `make pipeline-map`"


def test_chart_names_every_stage(chart):
    labels = set(re.findall(r'^\s*node\d+\["(.+)"\]$', chart, re.MULTILINE))
    names = stage_names()
    assert len(names) > 10, names
    missing = [name for name in names if name not in labels]
    assert not missing, f"stages of dvc.yaml that the chart does not draw: {missing} (it draws {sorted(labels)})"


def test_script_rewrites_a_stale_chart(chart, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("pipeline_map", REPO / "scripts" / "pipeline_map.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "chart", lambda: chart)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(BEGIN, BEGIN + '\tnode0["a stage since renamed"]\n'), encoding="utf-8")

    assert script.main(["--check", "--readme", str(stale)]) == 1
    assert '-\tnode0["a stage since renamed"]' in capsys.readouterr().out
    assert "a stage since renamed" in stale.read_text(encoding="utf-8")  # --check writes nothing

    assert script.main(["--readme", str(stale)]) == 0
    assert readme_block(stale.read_text(encoding="utf-8")) == chart
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]  # no temporary file left


def test_script_check_passes_on_the_readme():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pipeline_map.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
