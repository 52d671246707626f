"""params.yaml, one section per stage, checked against a dataclass so a wrong type fails early."""

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from .errors import EdgetuneError

PARAMS_FILE = Path("params.yaml")


def read_params(path=PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: not found. Run edgetune from the project root, beside params.yaml.")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise EdgetuneError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise EdgetuneError(f"{path}: expected a mapping of sections at the top level.")
    return params


def _type_name(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value, t, where: str):
    """Return `value` as type `t`, or raise an error naming the parameter."""
    origin, args = typing.get_origin(t), typing.get_args(t)
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
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is Path and isinstance(value, str):
        return Path(value)
    if t is typing.Any or (isinstance(value, t) and not (t is int and isinstance(value, bool))):
        return value
    raise _wrong(where, value, t)


def _wrong(where, value, t) -> EdgetuneError:
    return EdgetuneError(
        f"{PARAMS_FILE}: `{where}` is {value!r} ({type(value).__name__}); expected {_type_name(t)}. Fix it in params.yaml."
    )


def load(section: str, cls, path=PARAMS_FILE):
    """Read `section` of params.yaml into dataclass `cls`; unknown or mistyped keys are errors."""
    raw = read_params(path).get(section)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EdgetuneError(f"{path}: section `{section}` must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise EdgetuneError(
            f"{path}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; known: {', '.join(sorted(fields))}."
        )
    values = {k: _check(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
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
