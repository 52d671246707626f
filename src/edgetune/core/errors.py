"""The one exception a stage raises for bad input: click prints it and exits non-zero."""

import reprlib

import click


class EdgetuneError(click.ClickException):
    """A user-facing error: say which input, what is wrong, and how to fix it."""

    exit_code = 2


# A value in a message is cut short: a params file or a data row may hold a huge one.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 10, 10


def cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value) -> str:
    """A value as an error message shows it: its repr, at most 200 characters."""
    return cut(_REPR.repr(value))
