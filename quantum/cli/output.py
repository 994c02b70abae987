"""Where the CLI writes: two consoles that print text as it is, and the one-line error."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from quantum.views import plain

# markup, emoji codes and highlighting are off: no string that reaches a console is ever interpreted; our own
# styling is given with ``style=`` and :class:`rich.text.Text`
console = Console(markup=False, emoji=False, highlight=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False)

ERROR = Text("error: ", style="bold red")


def say(*parts: str | Text, err: bool = False) -> None:
    """Print one line made of our own words (``str``) and values already made safe with :func:`plain`."""
    (err_console if err else console).print(Text.assemble(*parts), soft_wrap=True)


def error_line(message: str) -> Text:
    """``error: <message>``, the message on one line with its control characters escaped."""
    return ERROR + plain(message, one_line=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Say what went wrong in one line on stderr and leave with ``code`` (2: the command was used wrongly)."""
    err_console.print(error_line(message), soft_wrap=True)
    raise typer.Exit(code)


def fail_listing(message: str, code: int = 1) -> NoReturn:
    """Like :func:`fail` for a message that lists several problems, one per line."""
    err_console.print(ERROR + plain(message), soft_wrap=True)
    raise typer.Exit(code)
