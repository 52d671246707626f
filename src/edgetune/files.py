"""Safe outputs, JSONL, the predictions CSV and checksums.

Never lose the user's work: an output is written beside its final path and moved there only when
complete, so an interrupted stage never leaves a half file a later stage trusts; an output folder
carries a marker file, and a folder without it (the user's) is never replaced; an output path
that is the working directory, the home folder, an input or a folder holding one is refused.
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

from .errors import EdgetuneError

MARKER = ".edgetune"  # in every folder edgetune writes: the proof that it may replace that folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _clear_stale(path: Path) -> None:
    """Remove the temporary files or folders a killed run left beside `path` (named `.NAME.*.tmp`, as
    _tmp_beside and atomic_dir name them)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _tmp_beside(path: Path, suffix: str = "") -> Path:
    """An empty temporary file beside `path`."""
    _mkdir(path.parent)
    _clear_stale(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the folder, not the temporary file
        raise OSError(e.errno, e.strerror, str(path.parent)) from None
    os.close(fd)
    return Path(name)


def _mkdir(folder: Path) -> None:
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
        os.chmod(tmp, 0o666 & ~_umask())  # the mode a new file gets (mkstemp's is 0600)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def check_outputs(inputs=(), files=(), folders=(), shared=()) -> None:
    """Refuse, before any work, output paths that would replace what is not the command's own.

    files    replaced whole: not a folder, not an input
    folders  replaced whole: not an input nor a folder holding one, and new, empty or edgetune's
    shared   a folder the command adds named files to, beside other stages' (report's reports/)
    None of them may be the working directory, a folder above it (the filesystem root) or home.
    """
    cwd = Path.cwd().resolve()
    ins = {Path(p).resolve(): p for p in inputs if p is not None}
    seen = set()
    for kind, paths in (("file", files), ("folder", folders), ("shared", shared)):
        for out in (Path(p) for p in paths if p is not None):
            where = out.resolve()
            if str(out) in ("", ".") or cwd.is_relative_to(where) or where == Path.home().resolve():
                raise EdgetuneError(
                    f"output `{out}` is the working directory, a folder above it or the home folder; "
                    "edgetune writes only into a folder of its own. Choose a new folder, e.g. "
                    "--out deploy."
                )
            if where in seen:
                raise EdgetuneError(f"output `{out}` is given twice; each output needs a path of its own.")
            seen.add(where)
            if kind == "shared":
                continue
            for i, given in ins.items():
                if where == i or (kind == "folder" and i.is_relative_to(where)):
                    raise EdgetuneError(
                        f"output `{out}` {'is' if where == i else 'holds'} the input `{given}`; writing "
                        "there would replace it. Choose another output path."
                    )
            if kind == "file" and out.is_dir():
                raise EdgetuneError(f"output `{out}` is a folder; give the path of a file.")
            if kind == "folder":
                check_own_folder(out)


def check_own_folder(folder: Path) -> None:
    """A folder edgetune may fill or replace: new, empty, or holding its marker."""
    if folder.is_file() or folder.is_symlink():
        raise EdgetuneError(f"output `{folder}` is a file or a link, not a folder. Choose another output path.")
    if folder.is_dir() and not (folder / MARKER).is_file() and any(folder.iterdir()):
        raise EdgetuneError(
            f"output folder `{folder}` holds files edgetune did not write (it has no {MARKER} "
            "marker), and replacing it would delete them. Move them away, or choose another output "
            "folder."
        )


def mark(folder: Path, command: str) -> None:
    """Claim `folder` as the output of `command`: the next run may replace it."""
    _mkdir(folder)
    (folder / MARKER).write_text(f"written by `edgetune {command}`; it replaces this folder when it runs again\n")


@contextlib.contextmanager
def atomic_dir(final, command: str):
    """Yield a new temporary folder, marked as `command`'s; it replaces folder `final` (only a
    folder edgetune wrote, or an empty one) if the block succeeds."""
    final = Path(final)
    check_own_folder(final)
    _mkdir(final.parent)
    _clear_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    old = final.with_name(f".{final.name}.old.tmp")
    try:
        mark(tmp, command)
        yield tmp
        check_own_folder(final)  # again: it may have changed while the command ran
        if final.exists():
            os.replace(final, old)  # out of the way first: the new folder lands in one rename
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf(path: Path, whole: bool = True) -> None:
    """A complete GGUF file, or an error naming it: a truncated copy or download, or another format,
    fails here in one line instead of deep inside llama.cpp or transformers. `whole=False` checks
    only that it is there and is a GGUF, for a stage whose llama.cpp tool reads it whole anyway."""
    from . import gguf_header

    if not path.is_file():
        raise EdgetuneError(
            f"{path}: GGUF file not found. `dvc pull {path}` fetches it from the DVC remote; `dvc repro` "
            "builds it. Or fix the path."
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise EdgetuneError(
            f"{path}: not a GGUF file (it begins with {magic!r}, not b'GGUF'). Fetch or make it again, "
            "or fix the path."
        )
    if not whole:
        return
    size = path.stat().st_size
    try:
        end = gguf_header.read(path).end
    except ValueError as e:
        raise EdgetuneError(
            f"{path}: truncated or damaged GGUF file ({size:,} bytes; {str(e)[:200]}). Fetch or make it again."
        ) from None
    if end > size:
        raise EdgetuneError(
            f"{path}: truncated GGUF file ({size:,} bytes; its tensors need {end:,}). Fetch or make it again."
        )
