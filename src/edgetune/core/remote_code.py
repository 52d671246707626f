"""Consent for a model's own Python code: `model.trust_remote_code`, checked wherever a model loads.

A checkpoint whose config.json or tokenizer_config.json has an `auto_map` ships modelling code
that transformers imports when asked to trust it. edgetune asks only when the params say so.
"""

import json
from pathlib import Path

from edgetune.core.errors import EdgetuneError

PARAM = "model.trust_remote_code"


def needs_code(checkpoint: Path) -> list[str]:
    """The files of `checkpoint` that point at Python code of its own (an `auto_map`)."""
    found = []
    for name in ("config.json", "tokenizer_config.json"):
        path = checkpoint / name
        try:
            if path.is_file() and "auto_map" in json.loads(path.read_text(encoding="utf-8")):
                found.append(name)
        except (ValueError, UnicodeDecodeError):
            raise EdgetuneError(
                f"{path}: not valid JSON. The checkpoint is damaged: fetch or make it again."
            ) from None
    return found


def allowed(checkpoint: Path, trust: bool, fix: str = f"set {PARAM}: true in params.yaml") -> bool:
    """The trust_remote_code to load `checkpoint` with: `trust` (model.trust_remote_code, or a command's
    flag); an error saying how to allow it when the checkpoint needs code that was not allowed."""
    found = needs_code(checkpoint)
    if found and not trust:
        raise EdgetuneError(
            f"{checkpoint}: this model needs its own Python code (an auto_map in "
            f"{' and '.join(found)}), which edgetune does not run unless told to. Read that code, "
            f"then {fix} to allow it."
        )
    return trust
