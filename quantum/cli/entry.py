"""The console entry point: every way a command ends becomes an exit code, and at most one line on stderr."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.text import Text

from quantum.cli.apps import app
from quantum.cli.output import err_console, error_line

log = logging.getLogger("quantum.cli")


def usage_error(err: typer.TyperException) -> int:
    """A command line typer could not use (a missing option, a bad value, an unknown command), in one line."""
    ctx = getattr(err, "ctx", None)
    if type(err).__name__ == "NoArgsIsHelpError":  # a group named alone: its help, which typer has shown
        if err.format_message().strip():
            err_console.print(Text(err.format_message()), soft_wrap=True)
        return err.exit_code
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err_console.print(error_line(" ".join(err.format_message().split()).rstrip(".") + hint), soft_wrap=True)
    return err.exit_code


def unexpected(err: Exception) -> int:
    log.debug("unexpected error", exc_info=err)
    message = f"unexpected {type(err).__name__}: {err} (QUANTUM_LOG_LEVEL=DEBUG shows where)"
    err_console.print(error_line(message), soft_wrap=True)
    return 1


def invoke(args: list[str] | None = None) -> int:
    """Run the command line ``args`` (default: the process's) and return its exit code; nothing escapes."""
    try:
        result = app(args=args, prog_name="quantum", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.TyperException as err:  # typer's usage errors
        return usage_error(err)
    except (typer.Abort, EOFError):
        err_console.print("aborted")
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:
        return unexpected(err)


def main() -> None:
    """Console entry point; leaves without interpreter teardown (temporalio/sdk-python#300)."""
    level = os.environ.get("QUANTUM_LOG_LEVEL", "WARNING")
    try:
        logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    except ValueError:
        err_console.print(error_line(f"QUANTUM_LOG_LEVEL {level!r} is not a level (DEBUG, INFO, WARNING, ERROR)"))
        code = 1
    else:
        code = invoke()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the reader went away (`quantum ... | head`)
            pass
    os._exit(code)
