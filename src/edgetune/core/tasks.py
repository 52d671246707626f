"""data.task: what a run teaches, set in the data preset and handed to every stage that reads rows.

  classify  labelled texts; prepare writes {"text", "label", "answer", "messages", "prompt"}
            per row, and a variant is judged by its accuracy on the test split
  sft       conversations; prepare writes {"messages", "input_ids", "assistant_mask"} per row,
            and a variant is judged by its perplexity on the held-out replies

No stage guesses the task from the shape of a row: it reads data.task and checks the rows
against it, so a split made for one task and read as the other fails in one clear line.
"""

from pathlib import Path
from typing import Annotated

from edgetune.core.errors import EdgetuneError
from edgetune.core.rules import OneOf

FIELDS = {
    "classify": ("text", "label", "answer", "messages", "prompt"),
    "sft": ("messages", "input_ids", "assistant_mask"),
}
METRIC = {"classify": "accuracy", "sft": "perplexity"}  # what tells variants apart

Task = Annotated[str, OneOf(*FIELDS)]


def check_rows(rows: list[dict], task: str, path: Path) -> list[dict]:
    """The rows, each holding what `task` needs, or an error naming the file, the row and the fix."""
    for i, row in enumerate(rows, 1):
        missing = [k for k in FIELDS[task] if k not in row]
        if missing:
            other = next((t for t, keys in FIELDS.items() if t != task and all(k in row for k in keys)), None)
            why = (
                f"it holds {other} rows, made while data.task was {other}. Run `dvc repro` to prepare the data again"
                if other
                else "make it with `edgetune prepare` (`dvc repro prepare`)"
            )
            raise EdgetuneError(
                f"{path}: row {i} has no {', '.join(missing)}, which data.task: {task} needs; {why}, "
                "or set data.task to what the data is."
            )
    return rows
