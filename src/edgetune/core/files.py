"""Files written whole or not at all, JSONL, the predictions CSV and checksums.

Never lose the user's work: an output is written beside its final path and moved there only when
complete, so an interrupted stage never leaves a half file a later stage trusts. Which outputs a
command may replace is outputs.py's story.
"""

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgetune.core.bounds import json_value  # JSON nested no deeper than the parser's stack allows
from edgetune.core.errors import EdgetuneError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def clear_stale(path: Path) -> None:
    """Remove the temporary files or folders a killed run left beside `path` (named `.NAME.*.tmp`, as
    tmp_beside and atomic_dir name them)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def tmp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file beside `path`."""
    mkdir(path.parent)
    clear_stale(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the folder, not the temporary file
        raise OSError(e.errno, e.strerror, str(path.parent)) from None
    os.close(fd)
    return Path(name)


def mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EdgetuneError(
            f"{folder}: a file stands where an output folder should go. Move it, or choose another output path."
        ) from None


def read_text(path) -> str:
    """A text input, with a clear error when it is not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise EdgetuneError(
            f"{path}, line {line}: not UTF-8 text (byte {e.object[e.start]:#04x}). Convert the file "
            f"to UTF-8, e.g. `iconv -f GBK -t UTF-8 {path} > utf8.{path.suffix.lstrip('.')}`."
        ) from None


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    for n, line in enumerate(read_text(path).split("\n"), 1):  # line numbers as editors count them
        if not line.strip():
            continue
        try:
            rows.append(json_value(line, f"{path}, line {n}"))
        except json.JSONDecodeError as e:
            raise EdgetuneError(f"{path}, line {n}: not valid JSON ({e.msg}). Fix or remove that line.") from None
    return rows


@contextlib.contextmanager
def atomic_path(final, suffix: str = ""):
    """Yield a temporary path beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    tmp = tmp_beside(final, suffix)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # the mode a new file gets (mkstemp's is 0600)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def records(paths: list[Path]) -> list[dict]:
    """Each file's path and content hash, as evaluate records a variant's files and export checks
    them: the file shipped is the file measured."""
    return [{"path": str(p), "sha256": sha256_file(p)} for p in paths]


def read_checksums(path: Path) -> dict[str, str]:
    """A SHA256SUMS file (file name -> sha256) as `sha256sum` writes and checks it, or an error naming
    the line: each holds a digest and the plain name of a file in the same folder, so that checking
    the files reads none outside it."""
    again = "Export the bundle again (`edgetune export`)."
    sums = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise EdgetuneError(f"{path}, line {n}: `{line}` is not `<sha256>  <file name>`. {again}")
        digest = fields[0].lower()  # as sha256_file gives it
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise EdgetuneError(f"{path}, line {n}: `{fields[0]}` is not a sha256 (64 hex digits). {again}")
        mode, name = line[64:66], line[66:]  # two spaces, or ` *` (sha256sum's binary mode), then the name
        if mode not in ("  ", " *"):
            raise EdgetuneError(f"{path}, line {n}: `{line}` is not `<sha256>  <file name>`. {again}")
        if name in ("", ".", "..") or Path(name).name != name or glob.has_magic(name) or "\\" in name:
            raise EdgetuneError(
                f"{path}, line {n}: `{name}` is not the name of a file beside it (no folders, `..`, "
                f"absolute paths or wildcards). {again}"
            )
        if name in sums:
            raise EdgetuneError(f"{path}, line {n}: `{name}` is listed twice. {again}")
        sums[name] = digest
    if not sums:
        raise EdgetuneError(f"{path}: lists no files. {again}")
    return sums


def write_checksums(path: Path, sums: dict[str, str]) -> None:
    """SHA256SUMS as read_checksums reads it, and `sha256sum -c` checks it."""
    write_text(path, "".join(f"{digest}  {name}\n" for name, digest in sums.items()))


def copy_measured(record: list[dict], folder: Path, metrics: Path, root: Path | None = None) -> list[str]:
    """The files the report measured into `folder`, each checked against its recorded sha256, and
    SHA256SUMS; each by its name, or at its place under `root` where the files are a tree (a Core
    ML package). The names written."""
    names = [str(Path(f["path"]).relative_to(root)) if root else Path(f["path"]).name for f in record]
    for f, name in zip(record, names):
        copy = folder / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f["path"], copy)
        if sha256_file(copy) != f["sha256"]:
            raise EdgetuneError(
                f"{f['path']}: changed since the report measured it (its sha256 is not the one in {metrics}). "
                "Rerun the pipeline (`dvc repro`) to measure the file you ship."
            )
    write_checksums(folder / "SHA256SUMS", {name: f["sha256"] for f, name in zip(record, names)})
    return names
