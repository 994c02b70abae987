"""``quantum review``, and the two ways ``quantum demo`` answers a gate (automatically, or by asking)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import ValidationError
from rich.prompt import Confirm, Prompt
from rich.text import Text
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from events import signing
from events.models import PipelineRequest, ReviewDecision, ReviewInput
from quantum.cli.apps import app
from quantum.cli.connect import client_for, load_settings
from quantum.cli.errors import USAGE, CliError, namespace_missing, run
from quantum.cli.output import console, error_line, fail, say
from quantum.cli.params import RunId, describe_options
from quantum.cli.runs import TERMINAL, GateHandler, ending, fetch_status, has_ended
from quantum.views import plain
from workflows.models import AuditEntry, ReviewVerdict, RunStatusView
from workflows.reviews import REFUSED, gate_policy, signed_message

REVIEW_OPTIONS = {
    "gate": "--gate",
    "reviewer": "--reviewer",
    "comment": "--comment",
    "approved": "--approve/--reject",
    "digest": "--digest",
}
TOO_LATE = "reviews are taken only while a gate is pending"
RECORD_WAIT_SECONDS = 30.0
SIGNATURE_LIFETIME = timedelta(minutes=10)


def review_input(gate: str, reviewer: str, approved: bool, comment: str, digest: str | None = None) -> ReviewInput:
    """The review as given, checked as the bus checks ``quantum.review.submitted``; a :class:`CliError` (usage)
    naming each option that is wrong otherwise."""
    try:
        return ReviewInput(gate=gate, reviewer=reviewer, approved=approved, comment=comment, digest=digest)
    except ValidationError as err:
        raise CliError(describe_options(err, REVIEW_OPTIONS), USAGE) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The reviewer's Ed25519 private key: PEM (PKCS#8), 32 raw bytes, or their base64."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read the reviewer key file {path}: {err.strerror or err}") from None
    try:
        if data.strip().startswith(b"-----BEGIN"):
            key = load_pem_private_key(data.strip(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("not an Ed25519 private key")
            return key
        raw = data if len(data) == 32 else base64.b64decode(data.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (ValueError, TypeError, binascii.Error) as err:
        raise CliError(f"the reviewer key file {path} is not an Ed25519 private key: {err}") from None


def signed(decision: ReviewDecision, run_id: str, key: Ed25519PrivateKey, now: datetime) -> ReviewDecision:
    """``decision`` with a fresh nonce, an expiry and the signature of its canonical form for ``run_id`` (with the
    gate opening's challenge the decision names, where the run issued one)."""
    fresh = decision.model_copy(
        update={"nonce": secrets.token_urlsafe(18), "expires_at": (now + SIGNATURE_LIFETIME).isoformat()}
    )
    return fresh.model_copy(update={"signature": signing.sign(key, signed_message(fresh, run_id))})


async def review_by_update(
    handle: WorkflowHandle[Any, Any], decision: ReviewDecision, key: Ed25519PrivateKey | None
) -> ReviewVerdict | AuditEntry:
    """Send ``decision`` as the ``review`` Update (bound to the gate's digest, signed with ``key`` when given) and
    return the run's verdict at once, or a refused entry with the run's reason (the run recorded nothing). A run
    that predates the Update gets the signal (:func:`submit_review`) and the audit entry it recorded."""
    view = await fetch_status(handle)
    if view.status in TERMINAL:
        raise has_ended(handle.id, view.status, TOO_LATE)
    if decision.digest is None and decision.gate in view.gate_digests:
        decision = decision.model_copy(update={"digest": view.gate_digests[decision.gate]})
    if decision.challenge is None and decision.gate in view.gate_challenges:
        decision = decision.model_copy(update={"challenge": view.gate_challenges[decision.gate]})
    if key is not None:
        decision = signed(decision, handle.id, key, datetime.now(UTC))
    try:
        verdict: ReviewVerdict = await handle.execute_update("review", decision, result_type=ReviewVerdict)
        return verdict
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == REFUSED:  # nothing was recorded in the run
            return AuditEntry(
                gate=decision.gate,
                reviewer=decision.reviewer,
                approved=decision.approved,
                accepted=False,
                reason=cause.message,
            )
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND or namespace_missing(err):
            raise
        raise has_ended(handle.id, await ending(handle), TOO_LATE) from None
    return await submit_review(handle, decision)  # a run from before the Update


def _ours(entry: AuditEntry, decision: ReviewDecision) -> bool:
    return (entry.gate, entry.reviewer, entry.approved) == (decision.gate, decision.reviewer, decision.approved)


async def submit_review(handle: WorkflowHandle[Any, Any], decision: ReviewDecision) -> AuditEntry:
    """Signal ``decision`` to a run that is still going, and return what its audit trail recorded of it."""
    view = await fetch_status(handle)
    if view.status in TERMINAL:
        raise has_ended(handle.id, view.status, TOO_LATE)
    recorded = len(view.audit) + view.audit_dropped  # the audit keeps a bounded number of refused reviews
    try:
        await handle.signal("review", decision)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND or namespace_missing(err):
            raise
        raise has_ended(handle.id, await ending(handle), TOO_LATE) from None  # it ended a moment ago
    deadline = asyncio.get_running_loop().time() + RECORD_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        view = await fetch_status(handle)
        new = len(view.audit) + view.audit_dropped - recorded  # recorded since: the last ``new`` entries
        for entry in view.audit[-new:] if new > 0 else []:
            if _ours(entry, decision):
                return entry
        await asyncio.sleep(0.1)
    raise CliError("the review was sent but the run has not recorded it yet; check `quantum pipeline status`")


@app.command()
def review(
    pipeline_id: RunId,
    gate: Annotated[str, typer.Option(help="security, infra or deploy.")],
    reviewer: Annotated[str, typer.Option(help="Your name, as the approval policy lists it.")],
    approve: Annotated[bool | None, typer.Option("--approve/--reject", help="Your decision.")] = None,
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    digest: Annotated[
        str | None,
        typer.Option(help="The sha256 of what you reviewed (`pipeline status` shows it); default: the gate's now."),
    ] = None,
) -> None:
    """Approve or reject a gate; says at once whether the run accepted the review, and why not.

    Signed with the Ed25519 key of QUANTUM_REVIEWER_KEY_FILE when it is set.
    """
    if approve is None:
        fail("say --approve or --reject", USAGE)
    try:
        decision = review_input(gate, reviewer, approve, comment, digest).decision()
    except CliError as err:
        fail(str(err), err.code)
    settings = load_settings()

    async def go() -> ReviewVerdict | AuditEntry:
        key = load_private_key(settings.reviewer_key_file) if settings.reviewer_key_file else None
        client = await client_for(settings)
        return await review_by_update(client.get_workflow_handle(pipeline_id), decision, key)

    outcome = run(go(), settings)
    if isinstance(outcome, AuditEntry) and not outcome.accepted:
        say(Text("refused", style="bold red"), ": ", plain(outcome.reason, one_line=True), err=True)
        raise typer.Exit(1)
    parts: list[str | Text] = [
        Text("accepted", style="green"),
        f": {'approved' if approve else 'rejected'} gate '",
        plain(decision.gate, one_line=True),
        "' of ",
        plain(pipeline_id, one_line=True),
    ]
    if isinstance(outcome, ReviewVerdict):
        parts.append(
            f" ({outcome.gate_state}, {len(outcome.approvals)} of {outcome.required_approvals} approvals; "
            f"{outcome.identity})"
        )
    say(*parts)


def named_reviewers(request: PipelineRequest, gate: str) -> list[str]:
    """The reviewers the request names for ``gate``, resolved as the run resolves them."""
    return list(gate_policy(gate, request.approval_policy).reviewers)


def auto_approver(request: PipelineRequest) -> GateHandler:
    """Approve each gate with as many of the policy's reviewers as its quorum needs."""

    async def approve(handle: WorkflowHandle[Any, Any], view: RunStatusView) -> None:
        gate = view.pending_gate or ""
        reviewers = named_reviewers(request, gate) or ["auto-approver"]
        for reviewer in reviewers[: request.approval_policy.approvals_for(gate)]:
            say(
                Text("gate '", style="yellow"),
                plain(gate, style="yellow", one_line=True),
                Text("'", style="yellow"),
                ": approved automatically as ",
                plain(reviewer, one_line=True),
            )
            decision = review_input(gate, reviewer, True, "--auto-approve").decision()
            await handle.signal("review", decision)

    return approve


def person_at_the_gate(request: PipelineRequest) -> GateHandler:
    """Ask the person at the terminal to approve or reject each gate."""

    def ask(gate: str, default: str | None) -> ReviewInput:
        """One review, asked until it is valid (a name that is not empty, bounded lengths)."""
        while True:
            reviewer = Prompt.ask(Text("reviewer"), default=default, console=console) or ""
            approved = Confirm.ask(Text.assemble("approve gate '", plain(gate, one_line=True), "'?"), console=console)
            comment = Prompt.ask(Text("comment"), default="", console=console)
            try:
                return review_input(gate, reviewer, approved, comment)
            except CliError as err:
                console.print(error_line(str(err)), soft_wrap=True)

    async def on_gate(handle: WorkflowHandle[Any, Any], view: RunStatusView) -> None:
        gate = view.pending_gate or ""
        reason = view.outputs.get(f"{gate}_gate_reason", "")
        console.print()
        say(
            Text.assemble(("Gate '", "bold yellow"), plain(gate, style="bold yellow", one_line=True)),
            Text("' waits for a review", style="bold yellow"),
            " (",
            plain(reason, one_line=True),
            ")",
        )
        reviewers = named_reviewers(request, gate)
        for index in range(request.approval_policy.approvals_for(gate)):
            default = reviewers[index] if index < len(reviewers) else None
            # asked in a thread: the worker in this process keeps running while the person thinks
            given = await asyncio.to_thread(ask, gate, default)
            await handle.signal("review", given.decision())
            if not given.approved:
                break

    return on_gate
