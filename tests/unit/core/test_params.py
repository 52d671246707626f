"""Presets: params.yaml is what DVC composes from conf/ (Hydra), and every model, data and experiment
preset composes into params the stages accept."""

import dataclasses
from dataclasses import MISSING

import pytest
import yaml
from conftest import REPO

from edgetune.core import params
from edgetune.core.config import SCHEMA
from edgetune.core.errors import EdgetuneError


def compose(tmp_path, *overrides) -> dict:
    """What `dvc exp run -S ...` writes to params.yaml, by DVC's own function."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", str(REPO), list(overrides))
    return out


def test_params_yaml_is_the_composed_conf(tmp_path):
    assert "[hydra]" in (REPO / ".dvc" / "config").read_text()
    assert compose(tmp_path).read_text() == (REPO / "params.yaml").read_text(), (
        "params.yaml differs from conf/: edit conf/ and regenerate params.yaml (see the README)"
    )


def test_every_value_lives_in_conf_alone():
    """The dataclasses hold no default, a second copy that would drift from conf/; conf/ gives
    every key each one names, and nothing else; and some command reads every section."""
    from edgetune.cli import main

    composed = params.read_params(REPO / "params.yaml")
    read = {
        k.partition(".")[0]
        for c in main.commands.values()
        if c.name != "inputs"
        for k in getattr(c.callback, "reads", ())
    }
    assert read == set(SCHEMA) == set(composed)
    for section, cls in SCHEMA.items():
        fields = dataclasses.fields(cls)
        with_default = [f.name for f in fields if f.default is not MISSING or f.default_factory is not MISSING]
        assert with_default == [], f"{cls.__name__} has defaults for {with_default}: keep them in conf/ only"
        assert set(composed[section]) == {f.name for f in fields}, f"conf/ and {cls.__name__} name other keys"


def test_a_missing_key_is_named_with_where_it_lives(tmp_path):
    raw = params.read_params(REPO / "params.yaml")
    del raw["train"]["eval_steps"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(EdgetuneError, match=r"train.eval_steps missing. Every value lives in conf/"):
        params.Reading(("train",), tmp_path / "params.yaml")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_every_model_preset_composes(tmp_path, preset):
    path = compose(tmp_path, f"model={preset}")
    model = params.Reading(("model",), path).model
    assert model.name == preset
    assert model.trust_remote_code is False  # remote code only when the user allows it
    assert params.read_params(path)["data"] == params.read_params(REPO / "params.yaml")["data"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml")))
def test_every_data_preset_composes(tmp_path, preset):
    params.Reading(("data",), compose(tmp_path, f"data={preset}"))


def test_seed_experiment_a_is_one_override_away(tmp_path):
    path = compose(tmp_path, "model=qwen2.5-0.5b-instruct", "data=chnsenticorp", "experiment=sentiment")
    p = params.read_params(path)
    assert p["model"]["source"] == "Qwen/Qwen2.5-0.5B-Instruct" and p["data"]["source"] == "lansinuote/ChnSentiCorp"
    assert (p["lora"]["r"], p["lora"]["alpha"], p["lora"]["dropout"]) == (8, 16, 0.05)
    assert (p["train"]["epochs"], p["train"]["lr"], p["train"]["batch_size"], p["train"]["grad_accum"]) == (
        3,
        2e-4,
        4,
        4,
    )
    assert p["quantize"]["types"] == ["q4_k_m", "q5_k_m", "q8_0"]
    assert p["evaluate"] == params.read_params(REPO / "params.yaml")["evaluate"]  # the rest as committed


@pytest.mark.parametrize("experiment", [None, *sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))])
def test_every_preset_trains_on_a_base_it_ships(tmp_path, experiment):
    """train depends on the base of type lora.train_on, which only a quantize-base (or export-onnx-base)
    stage makes, at the path lora.train_on_file names."""
    from edgetune.core.variants import train_on_file

    p = params.read_params(compose(tmp_path, *([f"experiment={experiment}"] if experiment else [])))
    lora = p["lora"]
    assert lora["train_on"] in p["quantize"]["types"] + [f"onnx-{t}" for t in p["runtimes"]["onnx"]]
    assert lora["train_on_file"] == train_on_file(p["model"]["name"], lora["train_on"])


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_opens_with_the_command_that_runs_it(tmp_path, preset):
    """Line 1 is Hydra's package header (it must come first); line 2 the command, which composes."""
    header, command = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines()[:2]
    assert header == "# @package _global_"
    assert command.startswith("# dvc exp run ") and f"-S experiment={preset}" in command
    overrides = command.split()[4:][1::2]  # the values after each -S
    assert command.split()[4:][::2] == ["-S"] * len(overrides)
    composed = params.read_params(compose(tmp_path, *overrides))
    experiment = yaml.safe_load((REPO / "conf" / "experiment" / f"{preset}.yaml").read_text())
    for section, values in experiment.items():
        assert {k: composed[section][k] for k in values} == values, section
