"""params.yaml, read once per command and checked against its schema (config.py).

A stage's command names the keys it reads, whole sections or single keys, and gets them as its
`params` argument:

    @click.command("train")
    @reads("lora", "train", "data.task", "model.trust_remote_code")
    def train(..., params):
        params.train.lr, params.data.task   # any other key is an error

The same keys are the stage's `params:` in dvc.yaml (a test holds the two lists equal), so DVC
reruns a stage exactly when a value it reads changes.
"""

import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Annotated

from edgetune.core.bounds import load_yaml
from edgetune.core.config import SCHEMA, SECTIONS
from edgetune.core.errors import EdgetuneError, cut, shown
from edgetune.core.files import read_text

PARAMS_FILE = Path("params.yaml")


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
                f"{path}: unknown section `{cut(str(section))}`; {hint}the sections are {', '.join(SECTIONS)}. "
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


def parse(section: str, cls, raw, path=PARAMS_FILE):
    """One section's values (a mapping) as dataclass `cls`: unknown, missing, mistyped or out-of-range
    keys are errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EdgetuneError(f"{path}: section `{section}` must be a mapping, got {shown(raw)}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EdgetuneError(
            f"{path}: unknown key(s) {cut(', '.join(f'{section}.{k}' for k in unknown))}; "
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


def section(raw: dict, name: str, path=PARAMS_FILE):
    """Section `name` of the read file `raw`, checked."""
    if name not in raw:
        raise EdgetuneError(f"{path}: no `{name}` section. Add it (conf/config.yaml has every section).")
    return parse(name, SCHEMA[name], raw[name], path)


class Keys:
    """Some keys of one section: the others are not this command's to read."""

    def __init__(self, name: str, values, keys: tuple[str, ...]):
        self._name, self._values, self._keys = name, values, keys

    def __getattr__(self, key: str):
        if key.startswith("_") or key not in self._keys:
            raise AttributeError(
                f"{self._name}.{key} is not among the keys this command reads ({', '.join(self._keys)}): "
                "add it to the command's @reads and to its stage's params in dvc.yaml"
            )
        return getattr(self._values, key)


class Reading:
    """The keys of params.yaml one command reads, checked: `reading.train.lr`."""

    def __init__(self, keys: tuple[str, ...], path=PARAMS_FILE):
        raw, self.keys, self._sections = read_params(path), keys, {}
        self._raw = {k: raw.get(k) for k in keys if "." not in k}
        for key in keys:
            name, _, _ = key.partition(".")
            if name not in self._sections:
                self._sections[name] = section(raw, name, path)  # checked whole: its rules tie keys together

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.keys:
            return self._sections[name]
        some = tuple(k.partition(".")[2] for k in self.keys if k.startswith(f"{name}."))
        if not some:
            raise AttributeError(
                f"params section {name} is not among the keys this command reads ({', '.join(self.keys)}): "
                "add it to the command's @reads and to its stage's params in dvc.yaml"
            )
        return Keys(name, self._sections[name], some)

    def raw(self, name: str) -> dict:
        """Section `name` as params.yaml writes it (a model card quotes it as the user wrote it)."""
        return self._raw[name] or {}


def reads(*keys: str):
    """Decorate a command: params.yaml is read once, when it runs, and `keys` handed to it as `params`."""
    for key in keys:
        assert key.partition(".")[0] in SECTIONS, f"unknown params section in {key}"

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            return command(*args, params=Reading(keys), **kwargs)

        run.reads = keys
        return run

    return decorate
