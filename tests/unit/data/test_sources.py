"""ChnSentiCorp loads from the hub, ModelScope or a local folder, in that order, and a dataset id
that none of them has fails fast, naming every try."""

import json
import time

import pytest
import yaml
from conftest import REPO, run, set_params, write_jsonl


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
