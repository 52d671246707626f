"""One schema for params.yaml: each stage's command reads exactly the keys its dvc.yaml stage
declares as params, and nothing it did not declare."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from edgetune.cli import main
from edgetune.core.config import SCHEMA, SECTIONS, Params
from edgetune.core.params import Reading, reads

ROOT = Path(__file__).resolve().parents[3]


def stages() -> dict:
    return {name: s.get("do", s) for name, s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


def test_every_stage_declares_exactly_the_params_its_command_reads():
    checked = 0
    for name, stage in stages().items():
        command = main.commands[stage["cmd"].split()[1]]
        declared = getattr(command.callback, "reads", ())  # a command that reads no params has no @reads
        if stage.get("always_changed"):  # the inputs stage checks every section, at every run
            assert declared == SECTIONS, name
            continue
        assert sorted(stage.get("params", [])) == sorted(declared), (
            f"dvc.yaml: stage {name} lists params {stage.get('params')}, but `edgetune {command.name}` reads {declared}"
        )
        checked += 1
    assert checked == len(stages()) - 1


def test_the_sections_are_the_schemas_fields_and_params_yamls_sections_in_order():
    assert SECTIONS == tuple(f.name for f in dataclasses.fields(Params))
    assert tuple(yaml.safe_load((ROOT / "params.yaml").read_text())) == SECTIONS
    assert all(dataclasses.is_dataclass(cls) for cls in SCHEMA.values())


def test_a_command_gets_what_it_declares_and_nothing_else(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    got = Reading(("train", "data.task"), tmp_path / "params.yaml")
    assert got.train.lr == raw["train"]["lr"]
    assert got.data.task == raw["data"]["task"]
    with pytest.raises(AttributeError, match=r"data\.labels is not among the keys this command reads"):
        got.data.labels
    with pytest.raises(AttributeError, match="params section lora is not among"):
        got.lora


def test_reads_hands_the_command_its_keys_once_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())

    @reads("bench")
    def command(params):
        return params.bench

    assert command.reads == ("bench",)
    assert command().threads == yaml.safe_load((ROOT / "params.yaml").read_text())["bench"]["threads"]
