"""What keeps a flood of reviews from making a run unmanageable: the signature checks a gate opening spends, each
check made once, and the history's distance from Temporal's limits.

Deterministic: the counts live in the run's state, the history's length and size come from the workflow task
(recorded), and the checks are pure computation.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from events import signing

MAX_BAD_SIGNATURES = 64
"""Failed signature checks per gate opening on the signal path; past it, signed review signals are not checked."""
MAX_VERIFIED = 256
"""Signature checks remembered (so the Update's handler does not check again what its validator checked)."""
HISTORY_GUARD_EVENTS = 40_000
HISTORY_GUARD_BYTES = 40 * 1024 * 1024
"""Where a gate stops a flooded run: below Temporal's 51,200 events and 50 MB, with room to compensate."""


class ReviewGuard:
    """A run's bounds on the work and the history reviews may cost it."""

    def __init__(self) -> None:
        self._bad_signatures: Counter[str] = Counter()
        self._verified: dict[str, bool] = {}
        self.flooded = False

    def opened(self, gate: str) -> None:
        """A gate opened: its budget of failed signature checks starts again."""
        self._bad_signatures[gate] = 0

    def may_verify(self, gate: str) -> bool:
        return self._bad_signatures[gate] < MAX_BAD_SIGNATURES

    def failed_check(self, gate: str) -> None:
        self._bad_signatures[gate] += 1

    def verify(self, key: bytes, message: bytes, signature: str) -> bool:
        """:func:`events.signing.verify` with OpenSSL, each (key, message, signature) checked once."""
        seen = hashlib.sha256(key + b"\x00" + message + b"\x00" + signature.encode("utf-8", "replace")).hexdigest()
        known = self._verified.get(seen)
        if known is None:
            known = signing.verify(key, message, signature, native=True)
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            self._verified[seen] = known
        return known

    def watch_history(self) -> None:
        """Note when the history nears Temporal's limits; the gate waiting stops the run while it can compensate."""
        info = workflow.info()
        if info.get_current_history_length() >= HISTORY_GUARD_EVENTS or (
            info.get_current_history_size() >= HISTORY_GUARD_BYTES
        ):
            self.flooded = True

    @staticmethod
    def why_stopped(gate: str, refused: int) -> str:
        info = workflow.info()
        return (
            f"gate {gate!r} stopped the run: its history reached {info.get_current_history_length()} events "
            f"({info.get_current_history_size()} bytes) with {refused} refused reviews, near Temporal's limits; "
            "it stops while it can still compensate"
        )
