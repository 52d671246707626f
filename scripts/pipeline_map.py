"""python scripts/pipeline_map.py [--check]   (or `make pipeline-map`)

README.md's pipeline chart is the output of `dvc dag --md` (a mermaid flowchart, which GitHub draws),
kept between two markers:

    <!-- dvc dag --md: begin -->
    ...
    <!-- dvc dag --md: end -->

Without arguments this runs `dvc dag --md` in the repository root and writes its output between the
markers (a temporary file beside README.md, then os.replace: a reader never sees half a file). With
--check it writes nothing and exits 1, printing the difference, when README.md is out of date.
tests/e2e/test_pipeline_map.py checks the same.
"""

import argparse
import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN = "<!-- dvc dag --md: begin -->"
END = "<!-- dvc dag --md: end -->"


def dvc() -> str:
    """The dvc beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def chart(repo: Path = REPO) -> str:
    """`dvc dag --md` in repo, as it prints it."""
    try:
        done = subprocess.run(
            [dvc(), "dag", "--md"],
            cwd=repo,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        sys.exit("dvc is not installed here: `make setup` installs it in .venv")
    if done.returncode:
        sys.exit(f"`dvc dag --md` failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def between(text: str) -> tuple[int, int]:
    """Where the chart starts and ends in text: after the begin marker's line, at the end marker."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        sys.exit(f"README.md needs each marker exactly once, on its own line: {BEGIN} ... {END}")
    start = text.index(BEGIN) + len(BEGIN)
    stop = text.index(END)
    if stop < start or text[start : start + 1] != "\n":
        sys.exit(f"README.md's markers are out of order or not on their own lines: {BEGIN} ... {END}")
    return start + 1, stop


def block(text: str) -> str:
    """The text between the markers."""
    start, stop = between(text)
    return text[start:stop]


def splice(text: str, new: str) -> str:
    """text with new between the markers (new ends with a newline, so the end marker keeps its line)."""
    start, stop = between(text)
    return text[:start] + new + ("" if new.endswith("\n") else "\n") + text[stop:]


def write(path: Path, text: str) -> None:
    """text into path atomically: a temporary file in the same folder, then os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if README.md is out of date")
    parser.add_argument("--readme", type=Path, default=README, help="the file to update (default: %(default)s)")
    args = parser.parse_args(argv)

    current = args.readme.read_text(encoding="utf-8")
    wanted = splice(current, chart())
    if wanted == current:
        print(f"{args.readme}: the pipeline chart is up to date")
        return 0
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            fromfile=f"{args.readme} (now)",
            tofile=f"{args.readme} (dvc dag --md)",
        )
        sys.stdout.writelines(diff)
        print(f"{args.readme}: the pipeline chart is out of date; `make pipeline-map` rewrites it")
        return 1
    write(args.readme, wanted)
    print(f"{args.readme}: the pipeline chart rewritten from `dvc dag --md`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
