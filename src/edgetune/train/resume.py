"""Resuming an interrupted train stage: its checkpoints, the fingerprint of what made them, and
dvclive's log, so that `dvc repro` after a kill continues where the run stopped.

Checkpoints go to <adapter>/checkpoints; a run continues from the last one only when the params,
data and training code it was made from are unchanged (fingerprint.json says so), and never once
it has finished (`dvc repro --force` trains again).
"""

import csv
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from edgetune.core.errors import EdgetuneError
from edgetune.core.files import sha256_file, write_json

FINGERPRINT = "fingerprint.json"


def fingerprint(settings: list, files: list[Path]) -> str:
    """One hash of the params and of every file a run is made from (a missing file by its name)."""
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(s) for s in settings], sort_keys=True).encode())
    for f in files:
        digest.update((sha256_file(f) if f.is_file() else str(f)).encode())  # read in chunks: a base GGUF is large
    return digest.hexdigest()


def resume_point(checkpoints: Path, print_: str) -> str | None:
    """The last checkpoint of an unfinished run made from the same params and data; None to start
    afresh. A finished run is trained again (`dvc repro --force`), not resumed at its last step
    into a run of no steps."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = checkpoints / FINGERPRINT
    made = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if made.get("fingerprint") == print_ and not made.get("finished"):
        return get_last_checkpoint(str(checkpoints))
    return None


def start_afresh(checkpoints: Path, print_: str) -> None:
    if checkpoints.exists():
        shutil.rmtree(checkpoints)  # made from other params or data: not ours to continue
    checkpoints.mkdir(parents=True)
    write_json(checkpoints / FINGERPRINT, {"fingerprint": print_})


def finish(checkpoints: Path, print_: str) -> None:
    write_json(checkpoints / FINGERPRINT, {"fingerprint": print_, "finished": True})


def repair_summary(live_dir: Path) -> None:
    """dvclive rewrites its summary (metrics.json) in place at every logged step, so a run killed
    during that write leaves it empty, and dvclive fails to resume on it. Rebuild the one thing
    resuming reads from it, the last step, out of the plot files dvclive appends to."""
    summary = live_dir / "metrics.json"
    try:
        json.loads(summary.read_text(encoding="utf-8"))
        return
    except FileNotFoundError:
        return
    except ValueError:
        pass
    steps = [
        int(row["step"])
        for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv")
        for row in csv.DictReader(tsv.open(encoding="utf-8"), delimiter="\t")
        if (row.get("step") or "").isdigit()
    ]
    write_json(summary, {"step": max(steps, default=0)})


def open_live(live_dir: Path, resume: bool):
    from dvclive import Live

    if resume:
        repair_summary(live_dir)
    try:
        return Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    except Exception as e:  # scmrepo's SCMError: dvclive reads the current commit
        if "Empty git repo" not in str(e):
            raise
        raise EdgetuneError(
            "this git repository has no commit yet; dvclive needs one. Commit dvc.yaml and "
            "params.yaml (`git add -A && git commit`), then run again."
        ) from None
