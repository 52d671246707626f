"""params.yaml, one section per stage, checked against a dataclass so a wrong value fails early.

A field's type may carry a rule with `typing.Annotated`: `Annotated[int, Range(min=1)]`,
`Annotated[str, OneOf("bfloat16", "float32")]`, or `Name` for anything that becomes part of a
file name or a command line (model.name, the quant types): letters, digits, `.`, `_` and `-`.

The dataclasses name and check the keys; they hold no values. Every value lives in conf/ (Hydra
composes params.yaml from it), so a default is written once, where a user looks for it.
"""

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated

from edgetune.core.bounds import load_yaml
from edgetune.core.errors import EdgetuneError
from edgetune.core.files import read_text

PARAMS_FILE = Path("params.yaml")
# The sections of params.yaml (conf/config.yaml composes them): any other is a misspelling.
SECTIONS = (
    "model",
    "hub",
    "data",
    "prompt",
    "lora",
    "train",
    "evaluate",
    "quantize",
    "imatrix",
    "quality",
    "bench",
    "recommend",
    "export",
    "phone",
    "baseline",
)


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numbers: min/max inclusive, above/below exclusive, plus any of `also` (a sentinel such as -1)."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    also: tuple = ()

    def allows(self, v) -> bool:
        if v in self.also:
            return True
        return (
            (self.min is None or v >= self.min)
            and (self.max is None or v <= self.max)
            and (self.above is None or v > self.above)
            and (self.below is None or v < self.below)
        )

    def __str__(self) -> str:
        bounds = [
            f">= {self.min}" if self.min is not None else "",
            f"> {self.above}" if self.above is not None else "",
            f"<= {self.max}" if self.max is not None else "",
            f"< {self.below}" if self.below is not None else "",
        ]
        text = " and ".join(b for b in bounds if b)
        return text + "".join(f", or {a}" for a in self.also)


@dataclasses.dataclass(frozen=True)
class OneOf:
    choices: tuple

    def __init__(self, *choices):
        object.__setattr__(self, "choices", choices)

    def allows(self, v) -> bool:
        return v in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclasses.dataclass(frozen=True)
class Pattern:
    regex: str
    meaning: str

    def allows(self, v) -> bool:
        return re.fullmatch(self.regex, v) is not None

    def __str__(self) -> str:
        return self.meaning


# Names end up in file names, dvc.yaml commands and exported scripts: nothing a shell would read.
Name = Annotated[
    str, Pattern(r"[A-Za-z0-9][A-Za-z0-9._-]*", "letters, digits, '.', '_' and '-' (starting with a letter or digit)")
]
Positive = Annotated[int, Range(min=1)]
# What a machine holds at once, bounded far above any real run: a slip such as 10**9 fails here,
# not as an allocation deep inside torch. (A rule of its own: a value below 1 is told `>= 1`.)
BatchSize = Annotated[Positive, Range(max=4096)]
Tokens = Annotated[Positive, Range(max=2**20)]

# A value in a message is cut short: a params file may hold a huge one.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 10, 10


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value) -> str:
    """A value as an error message shows it: its repr, at most 200 characters."""
    return _cut(_REPR.repr(value))


def read_params(path=PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: not found. Run edgetune from the project root, beside params.yaml.")
    params = load_yaml(read_text(path), path) or {}
    if not isinstance(params, dict):
        raise EdgetuneError(f"{path}: expected a mapping of sections at the top level.")
    for section in params:
        if section not in SECTIONS:
            near = difflib.get_close_matches(str(section), SECTIONS, n=1)
            hint = f"did you mean `{near[0]}`? " if near else ""
            raise EdgetuneError(
                f"{path}: unknown section `{_cut(str(section))}`; {hint}the sections are {', '.join(SECTIONS)}. "
                "Rename or remove it (edit conf/ when params.yaml is composed from it)."
            )
    return params


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value, t, where: str):
    """Return `value` as type `t`, or raise an error naming the parameter."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Annotated:
        checked = _check(value, args[0], where)
        for rule in args[1:]:
            if not rule.allows(checked):
                raise EdgetuneError(
                    f"{PARAMS_FILE}: `{where}` is {shown(value)}; allowed: {rule}. Fix it in params.yaml."
                )
        return checked
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except EdgetuneError as e:
                errors.append(e)
        raise errors[-1]
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(where, value, t)
        return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, value, t)
        # YAML reads keys such as 0 or 1 as numbers; labels and names are compared as text.
        keys = [str(k) if args[0] is str and isinstance(k, int) else k for k in value]
        return {_check(k, args[0], where): _check(v, args[1], f"{where}.{k}") for k, v in zip(keys, value.values())}
    if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):  # YAML reads .inf and .nan as numbers; no setting means them
            raise EdgetuneError(
                f"{PARAMS_FILE}: `{where}` is {shown(value)}; allowed: a finite number. Fix it in params.yaml."
            )
        return number
    if t is Path and isinstance(value, str):
        return Path(value)
    if t is typing.Any or (isinstance(value, t) and not (t is int and isinstance(value, bool))):
        return value
    raise _wrong(where, value, t)


def _wrong(where, value, t) -> EdgetuneError:
    return EdgetuneError(
        f"{PARAMS_FILE}: `{where}` is {shown(value)} ({type(value).__name__}); expected {_type_name(t)}. "
        "Fix it in params.yaml."
    )


def load(section: str, cls, path=PARAMS_FILE):
    """Read `section` of params.yaml into dataclass `cls`; unknown, missing, mistyped or out-of-range keys are errors."""
    params = read_params(path)
    if section not in params:
        raise EdgetuneError(f"{path}: no `{section}` section. Add it (conf/config.yaml has every section).")
    return parse(section, cls, params[section], path)


def parse(section: str, cls, raw, path=PARAMS_FILE):
    """One section's values (a mapping) as dataclass `cls`, checked as `load` checks them."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EdgetuneError(f"{path}: section `{section}` must be a mapping, got {shown(raw)}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EdgetuneError(
            f"{path}: unknown key(s) {_cut(', '.join(f'{section}.{k}' for k in unknown))}; "
            f"known: {', '.join(sorted(fields))}."
        )
    missing = [k for k in fields if k not in raw]
    if missing:
        raise EdgetuneError(
            f"{path}: {', '.join(f'{section}.{k}' for k in missing)} missing. Every value lives in conf/ "
            "(conf/config.yaml and its presets): add it there, or copy it from conf/ into this file."
        )
    values = {k: _check(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)  # a __post_init__ checks rules that tie two keys together
    except TypeError as e:
        raise EdgetuneError(f"{path}: section `{section}`: {e}") from None


def value(key: str, t, path=PARAMS_FILE):
    """One value of params.yaml by its dotted key (data.labels), checked against type `t`."""
    node = read_params(path)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise EdgetuneError(f"{path}: `{key}` is missing. Add it to params.yaml.")
        node = node[part]
    return _check(node, t, key)
