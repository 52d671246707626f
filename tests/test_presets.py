"""Presets: params.yaml is what DVC composes from conf/ (Hydra), every model and data preset
composes into params the stages accept, Gemma's template is supplied where a model has none,
and ChnSentiCorp loads from the hub, ModelScope or a local folder, in that order."""

import copy
import dataclasses
import json
import time
from dataclasses import MISSING

import pytest
import yaml
from conftest import REPO, committed, run, set_params, write_jsonl

from edgetune.core import params
from edgetune.core.config import SCHEMA
from edgetune.core.errors import EdgetuneError
from edgetune.data.fetch_model import supply_template


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


def test_gemma_template_is_supplied_with_its_end_of_turn(gemma_tokenizer, qwen_tokenizer):
    gemma_tokenizer, qwen_template = copy.deepcopy(gemma_tokenizer), qwen_tokenizer.chat_template
    assert not gemma_tokenizer.chat_template  # the registry's Gemma-3-270M carries none
    supply_template(gemma_tokenizer, committed("model", chat_template="gemma"))
    turns = [{"role": "system", "content": ""}, {"role": "user", "content": "你好"}]
    text = gemma_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n"
    assert gemma_tokenizer.eos_token == "<end_of_turn>"
    with pytest.raises(EdgetuneError, match="model.chat_template is gemma"):
        supply_template(qwen_tokenizer, committed("model", chat_template="gemma"))  # Qwen has no <end_of_turn>
    with pytest.raises(EdgetuneError, match="'vicuna'"):
        supply_template(qwen_tokenizer, committed("model", chat_template="vicuna"))
    assert qwen_tokenizer.chat_template == qwen_template  # refused before anything changed


def published_layout(folder, reviews):
    """ChnSentiCorp's published layout: train / validation / test, columns text and label (0/1)."""
    folder.mkdir(parents=True)
    rows = [{"text": r["text"], "label": int(r["label"] == "positive")} for r in reviews]
    write_jsonl(folder / "train.jsonl", rows[:40])
    write_jsonl(folder / "validation.jsonl", rows[40:50] + rows[:2])  # two texts leak from train
    write_jsonl(folder / "test.jsonl", rows[50:])
    return rows


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_chnsenticorp_falls_back_to_the_local_published_splits(workdir, tiny_model, reviews, offline_hub):
    rows = published_layout(workdir / "raw", reviews)
    preset = yaml.safe_load((REPO / "conf" / "data" / "chnsenticorp.yaml").read_text())
    set_params(workdir, data={**preset, "local_dir": str(workdir / "raw")})
    result = run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")
    assert result.exit_code == 0, result.output
    out = {
        s: [json.loads(line) for line in (workdir / "out" / f"{s}.jsonl").read_text().splitlines()]
        for s in ("train", "val", "test")
    }
    assert [r["text"] for r in out["test"]] and {r["text"] for r in out["test"]} <= {r["text"] for r in rows[50:]}
    assert len(out["val"]) == 10 and not {r["text"] for r in out["val"]} & {r["text"] for r in out["train"]}
    assert {r["answer"] for r in out["train"]} == {"正面", "负面"}
    stats = json.loads((workdir / "stats.json").read_text())
    assert stats["cleaning"]["published_splits"]["val"]["dropped"]["in_train"] == 2


def test_dataset_id_fails_fast_naming_every_try(workdir, tiny_model, offline_hub):
    set_params(
        workdir,
        data={
            "source": "lansinuote/ChnSentiCorp",
            "local_dir": str(workdir / "nowhere"),
            "labels": {"0": "负面", "1": "正面"},
        },
    )
    start = time.monotonic()
    result = run("prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json")
    assert time.monotonic() - start < 60
    assert result.exit_code != 0
    for needle in ("lansinuote/ChnSentiCorp", "HF hub", "ModelScope", "data.local_dir", "nowhere", "HF_ENDPOINT"):
        assert needle in result.output, result.output
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()


@pytest.mark.parametrize("experiment", [None, *sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))])
def test_every_preset_trains_on_a_base_it_ships(tmp_path, experiment):
    """train depends on the base of type lora.train_on, which only a quantize-base stage makes."""
    p = params.read_params(compose(tmp_path, *([f"experiment={experiment}"] if experiment else [])))
    assert p["lora"]["train_on"] in p["quantize"]["types"]


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
