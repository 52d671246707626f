"""Where conversations come from (data.task: sft): each entry of data.source gives raw records,
which dialogue.to_messages turns into chat turns.

  a file or glob         ShareGPT/messages JSONL, alpaca or ShareGPT JSON, chatterbot YAML,
                         EmotionLines JSON (a list of dialogues, each a list of utterances)
  chatterbot:LANG[/CAT]  the chatterbot-corpus package's YAML files (offline; `pip install
                         edgetune[dialogue]`), for example chatterbot:chinese or chatterbot:chinese/emotion
  owner/name[@revision]  a hub dataset (honours HF_ENDPOINT, HF_TOKEN), every split: the rows'
                         messages, conversations or dialog columns
"""

import functools
import glob
import importlib.util
import json
from pathlib import Path

from edgetune.core import hub
from edgetune.core.bounds import check_line, check_regular_file, json_value, load_yaml
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_text

CHATTERBOT = "chatterbot:"
SUFFIXES = (".jsonl", ".json", ".yml", ".yaml")  # the files read_file reads


def read_records(source: str, revision: str, hub_params) -> list[tuple[str, object]]:
    """(where, record) for every record a data.source entry names; unreadable lines kept as None."""
    if source.startswith(CHATTERBOT):
        # named by the corpus, not by where this machine installed it
        return [rec for f in chatterbot_files(source) for rec in read_file(f, f"{CHATTERBOT}{f.parent.name}/{f.name}")]
    if is_dataset_id(source):
        return from_hub(source, revision, hub_params)
    return [rec for path in local_files(source) for rec in read_file(path, str(path))]


def local_files(source: str) -> list[Path]:
    """The files a data.source entry that is a file name or a glob names."""
    return [Path(name) for name in (sorted(glob.glob(source)) if glob.has_magic(source) else [source])]


def is_dataset_id(source: str) -> bool:
    """owner/name, optionally @revision: one slash, not a file name this reads, and no such path here."""
    name = source.split("@")[0]
    return (
        hub.is_id(name)
        and Path(name).suffix.lower() not in SUFFIXES
        and not glob.has_magic(name)
        and not Path(source).exists()
    )


def read_file(path: Path, where: str) -> list[tuple[str, object]]:
    check_regular_file(path, f"data.source `{path}`")
    text, suffix = read_text(path), path.suffix.lower()
    if suffix != ".json":  # one record a line, or YAML: each line within the bounds
        for n, line in enumerate(text.split("\n"), 1):
            check_line(line, f"{path}, line {n}")
    if suffix in (".yml", ".yaml"):
        return chatterbot_records(path, text, where)
    if suffix == ".json":
        try:
            data = json_value(text, str(path))
        except json.JSONDecodeError as e:
            raise EdgetuneError(
                f"{path}: not valid JSON ({e}). Fix it, or write one record a line as .jsonl."
            ) from None
        return [(where, r) for r in (data if isinstance(data, list) else [data])]
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append((where, json_value(line, f"{path}, line {n}")))
            except json.JSONDecodeError:
                records.append((where, None))  # counted as invalid
    return records


def chatterbot_records(path: Path, text: str, where: str) -> list[tuple[str, object]]:
    """A chatterbot YAML file: `conversations`, each a list of utterances, replies in turn."""
    data = load_yaml(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise EdgetuneError(f"{path}: no `conversations` list, as chatterbot corpus files have. Fix the file.")
    return [
        (where, [str(u) for u in c] if isinstance(c, list) else c)  # YAML reads a reply "42" as a number
        for c in data["conversations"]
    ]


def chatterbot_files(source: str) -> list[Path]:
    """The installed corpus' YAML files for chatterbot:LANG or chatterbot:LANG/CATEGORY."""
    found = importlib.util.find_spec("chatterbot_corpus")
    if found is None:
        raise EdgetuneError(
            f"data.source `{source}`: the chatterbot-corpus package is not installed. "
            "Install it with `pip install 'edgetune[dialogue]'` (`make setup` does)."
        )
    data = Path(list(found.submodule_search_locations)[0]) / "data"
    language, _, category = source[len(CHATTERBOT) :].partition("/")
    folder = data / language
    files = sorted(folder.glob(f"{category or '*'}.yml"))
    if not files:
        what = (
            f"categories: {', '.join(p.stem for p in sorted(folder.glob('*.yml')))}"
            if folder.is_dir()
            else f"languages: {', '.join(sorted(p.name for p in data.iterdir() if p.is_dir()))}"
        )
        raise EdgetuneError(f"data.source `{source}`: the installed corpus has no such files ({what}).")
    return files


def from_hub(source: str, revision: str, hub_params) -> list[tuple[str, object]]:
    """Every row of every split of a hub dataset; offline, an error naming the local-file way."""
    import datasets

    name, _, pinned = source.partition("@")
    datasets.disable_progress_bars()
    local = f"data/raw/dialogue/{name.split('/')[1]}.jsonl"
    hint = f"download it where the hub answers, write it as ShareGPT JSONL (for example {local}) and list that file"
    fetch = functools.partial(datasets.load_dataset, name, revision=pinned or revision)
    try:
        splits = hub.call(name, fetch, hub_params, hint)
    except EdgetuneError as e:
        raise EdgetuneError(f"data.source `{source}`: {e.message}") from None
    except Exception as e:  # offline, unknown id, gated: the hub client raises many kinds
        raise EdgetuneError(
            f"data.source `{source}`: {type(e).__name__}: {str(e).splitlines()[0][:200]}. Or {hint}."
        ) from None
    return [(f"{name}[{split}]", row) for split, rows in splits.items() for row in rows]
