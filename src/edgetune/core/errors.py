"""The one exception a stage raises for bad input: click prints it and exits non-zero."""

import click


class EdgetuneError(click.ClickException):
    """A user-facing error: say which input, what is wrong, and how to fix it."""

    exit_code = 2
