"""{{title}}: a command-line tool with subcommands.

Generated for the request: {{prompt}}

``main(argv)`` parses the arguments, runs the chosen subcommand and returns the exit code, so the tool can be
tested in-process: 0 on success, 1 when a command fails, 2 for a usage error (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

PROG = "{{project}}"
VERSION = "0.1.0"


class CommandError(Exception):
    """A command could not do its job; ``main`` prints the message and returns 1."""


def _greet(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    text = f"Hello, {args.name}!"
    print(text.upper() if args.shout else text, file=out)
    return 0


def _sum(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    if args.precision < 0:
        raise CommandError("--precision must be 0 or more")
    print(f"{sum(args.numbers):.{args.precision}f}", file=out)
    return 0


def _count(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    text = stdin.read()
    lines = len(text.splitlines())
    words = len(text.split())
    print(f"lines={lines} words={words} chars={len(text)}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per command, each naming its handler."""
    parser = argparse.ArgumentParser(prog=PROG, description="A small command-line tool with subcommands.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    greet = commands.add_parser("greet", help="say hello to someone")
    greet.add_argument("name", help="who to greet")
    greet.add_argument("--shout", action="store_true", help="greet in capitals")
    greet.set_defaults(handler=_greet)

    total = commands.add_parser("sum", help="add numbers")
    total.add_argument("numbers", nargs="+", type=float, help="the numbers to add")
    total.add_argument("--precision", type=int, default=2, help="decimal places (default 2)")
    total.set_defaults(handler=_sum)

    count = commands.add_parser("count", help="count lines, words and characters read from standard input")
    count.set_defaults(handler=_count)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the tool with ``argv`` (default: the process arguments) and return the exit code."""
    parser = build_parser()
    err = stderr or sys.stderr
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exit_:  # usage errors (2), --help and --version (0)
        return exit_.code if isinstance(exit_.code, int) else 1
    try:
        return int(args.handler(args, stdin or sys.stdin, stdout or sys.stdout))
    except CommandError as problem:
        print(f"{PROG}: error: {problem}", file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
