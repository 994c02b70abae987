"""The one error of the embedded stack."""

from __future__ import annotations


class StackError(RuntimeError):
    """The stack cannot come up; the message says what is in the way and what to set."""
