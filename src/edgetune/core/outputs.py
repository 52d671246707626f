"""Whose outputs: a command replaces only a folder it wrote itself, and only one command writes a
path at a time.

An output folder carries a marker file naming the command and option that wrote it, and a folder
without it (the user's) is never replaced; an output path that is the working directory, the home
folder, an input or a folder holding one is refused before any work.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import clear_stale, mkdir, umask

MARKER = ".edgetune"  # in every folder edgetune writes: the proof that it may replace that folder


def check_place(out: Path, where: Path, cwd: Path) -> None:
    """An output path any command may write: not the working directory, a folder above it or home,
    not an unexpanded `~`, and not under a file."""
    if str(out) in ("", ".") or cwd.is_relative_to(where) or where == Path.home().resolve():
        raise EdgetuneError(
            f"output `{out}` is the working directory, a folder above it or the home folder; "
            "edgetune writes only into a folder of its own. Choose a new folder, e.g. "
            "--out deploy."
        )
    if out.parts[0].startswith("~"):
        raise EdgetuneError(
            f"output `{out}` begins with `~`, which no shell expanded (it was quoted, or came from a "
            "file): edgetune would make a folder named `~`. Write the full path, e.g. $HOME/..."
        )
    standing = next((p for p in where.parents if p.exists() and not p.is_dir()), None)
    if standing is not None:
        raise EdgetuneError(
            f"output `{out}`: the file {standing} stands where its folder should go. Move it, or choose "
            "another output path."
        )


def check_outputs(inputs=(), files=(), folders=(), shared=()) -> None:
    """Refuse, before any work, output paths that would replace what is not the command's own, and
    take each output for this command alone until it ends (release_outputs).

    files    replaced whole: not a folder, not an input, nor inside an input or an output folder
    folders  replaced whole: not an input nor in or around one, and new, empty or this command's
    shared   a folder the command adds named files to, beside other stages' (report's reports/)
    None of them may be the working directory, a folder above it (the filesystem root), home, or a
    path under a file; one that begins with an unexpanded `~` is refused rather than created.
    """
    cwd = Path.cwd().resolve()
    ins = {Path(p).resolve(): p for p in inputs if p is not None}
    outs = [
        (kind, Path(p))
        for kind, paths in (("file", files), ("folder", folders), ("shared", shared))
        for p in paths
        if p is not None
    ]
    seen = set()
    for kind, out in outs:
        where = out.resolve()
        check_place(out, where, cwd)
        if where in seen:
            raise EdgetuneError(f"output `{out}` is given twice; each output needs a path of its own.")
        seen.add(where)
        if kind == "shared":
            continue
        for i, given in ins.items():
            if where == i or where.is_relative_to(i) or (kind == "folder" and i.is_relative_to(where)):
                how = "is" if where == i else "is inside" if where.is_relative_to(i) else "holds"
                raise EdgetuneError(
                    f"output `{out}` {how} the input `{given}`; writing there would replace it. Choose "
                    "another output path."
                )
        if kind == "file" and out.is_dir():
            raise EdgetuneError(f"output `{out}` is a folder; give the path of a file.")
        if kind == "folder":
            check_own_folder(out)
    for kind, out in outs:
        inside = next(
            (f for k, f in outs if k == "folder" and out != f and out.resolve().is_relative_to(f.resolve())), None
        )
        if inside is not None:
            raise EdgetuneError(
                f"output `{out}` is inside the output folder `{inside}`, which this command replaces whole. "
                "Choose a path outside it."
            )
    for _, out in outs:
        _take(out)


_held: list = []  # the lock files of the outputs the running command has taken


def _take(out: Path) -> None:
    """Hold `out` for this command: a second command writing the same path at once is told, instead
    of both writing (and one deleting the other's temporary files). The ranks of a distributed run
    share their outputs: the train command that launched them holds them."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    locks = Path(tempfile.gettempdir()) / f"edgetune-locks-{os.getuid()}"  # one user's: another's may not be writable
    locks.mkdir(mode=0o700, exist_ok=True)
    name = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32]
    lock = open(locks / name, "a")  # noqa: SIM115 - held open until release_outputs
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise EdgetuneError(
            f"output `{out}` is being written by another edgetune command right now. Wait for it to "
            "finish (or stop it), then run this again, or choose another output path."
        ) from None
    _held.append(lock)


def release_outputs() -> None:
    """Let other commands write the outputs this one took (the process's end does it too)."""
    while _held:
        _held.pop().close()


def _writer(folder: Path) -> str | None:
    """`edgetune COMMAND --OPTION`: the running command, and its option that names `folder`, as a
    marker records them; None outside a command (the library called from Python)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    named = [
        p.opts[0]
        for p in ctx.command.params
        if isinstance(ctx.params.get(p.name), (str, Path)) and Path(ctx.params[p.name]) == folder
    ]
    return " ".join([f"edgetune {ctx.info_name}", *named[:1]])


def writer_of(folder: Path) -> str | None:
    """Who wrote `folder`, as its marker says: `edgetune COMMAND --OPTION` (`edgetune COMMAND` for an
    older marker); None when it has no marker."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    found = re.search(r"`(edgetune [^`]*)`", marker.read_text(errors="replace"))
    return found.group(1) if found else "edgetune"


def check_own_folder(folder: Path) -> None:
    """A folder this command may fill or replace: new, empty, or marked as this command's output."""
    if folder.is_file() or folder.is_symlink():
        raise EdgetuneError(f"output `{folder}` is a file or a link, not a folder. Choose another output path.")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    wrote = writer_of(folder)
    if wrote is None:
        raise EdgetuneError(
            f"output folder `{folder}` holds files edgetune did not write (it has no {MARKER} "
            "marker), and replacing it would delete them. Move them away, or choose another output "
            "folder."
        )
    me = _writer(folder)
    command = me and " ".join(me.split()[:2])
    if me is not None and wrote not in ("edgetune", me, command):  # `edgetune COMMAND`: a marker older than the option
        raise EdgetuneError(
            f"output folder `{folder}` was written by `{wrote}`; only that command replaces it. "
            f"Choose another output path for `{me}`."
        )


def mark(folder: Path, named: Path | None = None) -> None:
    """Claim `folder` as the output the running command's option names (`named`, when the folder
    is written elsewhere first): only the same command and option replace it."""
    mkdir(folder)
    who = _writer(named or folder) or "edgetune"
    (folder / MARKER).write_text(f"written by `{who}`; only that command replaces this folder\n")


@contextlib.contextmanager
def atomic_dir(final):
    """Yield a new temporary folder, marked as the running command's; it replaces folder `final`
    (only a folder this command wrote, or an empty one) if the block succeeds."""
    final = Path(final)
    check_own_folder(final)
    mkdir(final.parent)
    clear_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~umask())
    old = final.with_name(f".{final.name}.old.tmp")
    try:
        mark(tmp, final)
        yield tmp
        check_own_folder(final)  # again: it may have changed while the command ran
        if final.exists():
            os.replace(final, old)  # out of the way first: the new folder lands in one rename
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
