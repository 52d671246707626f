"""A hub that accepts connections and never answers: fetch-model and prepare give up after hub.retries + 1
tries of about hub.timeout each, and say where they waited, which parameters bound the wait, and how to work
offline."""

import time
from types import SimpleNamespace

import pytest
from conftest import fake_hub, request_line, run, set_params

# huggingface_hub asks for this registry once a process (telemetry), whether or not a test before did.
TELEMETRY = "GET /api/agent-harnesses"


@pytest.fixture
def silent_hub():
    """HF_ENDPOINT is a server on 127.0.0.1 that reads each request and never sends a byte; offline mode is off.
    `requests` holds the request line of each connection it accepted."""
    connections, requests = [], []

    def listen(connection, stop):
        connections.append(connection)
        requests.append(request_line(connection))

    try:
        with fake_hub(listen) as url:
            yield SimpleNamespace(url=url, connections=connections, requests=requests)
    finally:
        for connection in connections:
            connection.close()


def timed(*args):
    start = time.monotonic()
    result = run(*args)
    return result, time.monotonic() - start


def asked_once_a_try(hub, request: str, tries: int):
    """`request` was sent once in each try, on a connection of its own: never retried within a try."""
    assert hub.requests.count(request) == tries, hub.requests
    assert set(hub.requests) <= {request, TELEMETRY}, hub.requests
    assert len(hub.connections) == len(hub.requests)


def test_fetch_model_gives_up_on_a_silent_hub(workdir, silent_hub):
    set_params(workdir, hub={"timeout": 1, "retries": 1}, model={"source": "someone/some-model"})
    result, seconds = timed("fetch-model", "--out", workdir / "base")
    assert result.exit_code != 0
    for needle in (silent_hub.url, "hub.timeout", "model.source at a local folder or .gguf file"):
        assert needle in result.output, result.output
    assert seconds < 30, "the timeout did not bound the wait"
    asked_once_a_try(silent_hub, "GET /api/models/someone/some-model/revision/main", tries=2)  # the repo's metadata
    assert not (workdir / "base").exists()


def test_prepare_gives_up_on_a_silent_hub(workdir, tiny_model, silent_hub):
    set_params(workdir, hub={"timeout": 1, "retries": 1}, data={"source": "someone/some-dataset"})
    result, seconds = timed(
        "prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json"
    )
    assert result.exit_code != 0
    for needle in (silent_hub.url, "hub.timeout", "data.local_dir"):
        assert needle in result.output, result.output
    assert seconds < 30, "the timeout did not bound the wait"
    # The dataset card's metadata, which huggingface_hub alone would send up to 6 more times, at 60 s each.
    asked_once_a_try(silent_hub, "HEAD /datasets/someone/some-dataset/resolve/main/README.md", tries=2)
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()


def test_a_hub_dialogue_set_offline_names_the_local_file_way(workdir, tiny_model, silent_hub):
    """data.task: sft merges hub datasets with local files; a hub that does not answer says how to do without it."""
    mine = workdir / "mine.jsonl"
    mine.write_text(
        '{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好呀！"}]}\n'
    )
    set_params(
        workdir,
        hub={"timeout": 1, "retries": 1},
        data={"task": "sft", "source": ["someone/some-dialogues", str(mine)]},
    )
    result, seconds = timed(
        "prepare", "--model", tiny_model, "--out", workdir / "out", "--stats", workdir / "stats.json"
    )
    assert result.exit_code != 0
    for needle in (
        "data.source `someone/some-dialogues`",
        silent_hub.url,
        "hub.timeout",
        "data/raw/dialogue/some-dialogues.jsonl",
    ):
        assert needle in result.output, result.output
    assert seconds < 30, "the timeout did not bound the wait"
    asked_once_a_try(silent_hub, "HEAD /datasets/someone/some-dialogues/resolve/main/README.md", tries=2)
    assert not (workdir / "out").exists() and not (workdir / "stats.json").exists()
