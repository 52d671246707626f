"""Atomic outputs, JSONL, the predictions CSV and checksums: an interrupted stage never leaves a
half file a later stage trusts."""

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import EdgetuneError


def _tmp_beside(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_text(path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path, rows) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_predictions(path, actual, predicted) -> None:
    """evaluate's per-example labels: the dvc confusion plot, and the report's paired comparisons."""
    buffer = io.StringIO()  # written by csv, as read_predictions reads it: labels may hold commas or quotes
    csv.writer(buffer, lineterminator="\n").writerows([("actual", "predicted"), *zip(actual, predicted)])
    write_text(path, buffer.getvalue())


def read_predictions(path) -> list[tuple[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [(row["actual"], row["predicted"]) for row in csv.DictReader(f)]


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: file not found. Run the stage that makes it (`dvc repro`).")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EdgetuneError(f"{path}, line {n}: not valid JSON ({e.msg}). Fix or remove that line.") from None
    return rows


@contextlib.contextmanager
def atomic_path(final, suffix: str = ""):
    """Yield a temporary path beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    tmp = _tmp_beside(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final):
    """Yield an empty temporary folder; it replaces folder `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
