"""Results: what a delivery is, what its one result says, and how users' shares fold into it.

Pure. A command message for several users is carried as one share per user
(some merged into multi-user calls, some cancelled by a Stop); :func:`fold`
turns the shares' ends into the message's single outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from worker.contract.messages import Result
from worker.core.outcomes import Outcome

Lane = Literal["commands", "stop"]
_NOT_DONE = frozenset({"failed", "expired", "invalid"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One command message as the broker received it."""

    body: bytes
    message_id: str | None = None
    headers: Mapping[str, Any] | None = None
    redelivered: bool = False
    lane: Lane = "commands"


@dataclass(frozen=True, slots=True)
class Handled:
    """What to do with a delivery: publish ``result``; dead-letter it when ``dead_letter``."""

    result: Result
    dead_letter: str | None = None


@dataclass(frozen=True, slots=True)
class ShareEnd:
    """How one user's share of a command ended."""

    uid: str
    outcome: Outcome
    superseded_by: str | None = None


def rfc3339(moment: datetime) -> str:
    """Return an RFC 3339 UTC timestamp with milliseconds."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fold(ends: list[ShareEnd], calls: int) -> tuple[Outcome, str | None]:
    """Fold the users' ends into one outcome and its ``supersededBy``; ``calls`` made in all."""
    first = ends[0]
    statuses = {e.outcome.status for e in ends}
    if len(ends) == 1 or len(statuses) == 1:
        outcome = Outcome(
            status=first.outcome.status, message=first.outcome.message, via=first.outcome.via,
            code=first.outcome.code, data=first.outcome.data, attempts=calls,
            fallback=any(e.outcome.fallback for e in ends),
        )
        return outcome, first.superseded_by
    failed = [e for e in ends if e.outcome.status in _NOT_DONE]
    sent = next((e.outcome for e in ends if e.outcome.via is not None), first.outcome)
    by = next((e.superseded_by for e in ends if e.superseded_by), None)
    if failed:
        return Outcome(
            status="failed", via=sent.via, code=failed[0].outcome.code, attempts=calls,
            message=f"{len(failed)} of {len(ends)} users failed: {failed[0].outcome.message}",
            failed_uids=[e.uid for e in failed],
            fallback=any(e.outcome.fallback for e in ends),
        ), by
    ok = sum(1 for e in ends if e.outcome.status == "ok")
    return Outcome(
        status="ok", via=sent.via, code=sent.code, attempts=calls,
        message=f"{sent.message}: done for {ok} of {len(ends)} users; the others were "
        "superseded before they were sent",
        fallback=any(e.outcome.fallback for e in ends),
    ), by


def publishable(result: Result, error: BaseException) -> Result:
    """Return a result that can be published when ``result`` itself could not be.

    It keeps what identifies the command and its status, and says why the rest is gone.
    """
    return Result(
        id=result.id, command=result.command, uids=[], status=result.status, via=result.via,
        code=result.code, attempts=result.attempts, fallback=result.fallback,
        redelivered=result.redelivered, supersededBy=result.supersededBy,
        receivedAt=result.receivedAt, completedAt=result.completedAt,
        message=f"{result.message[:512]} (the full result could not be published: "
                f"{type(error).__name__})",
    )


def make_result(
    ident: str, command: str, uids: list[str], outcome: Outcome, *, superseded_by: str | None,
    redelivered: bool, received: datetime, completed: datetime,
) -> Result:
    """Build the result message."""
    return Result(
        id=ident, command=command, uids=uids, status=outcome.status, via=outcome.via,
        code=outcome.code, message=outcome.message, data=outcome.data,
        attempts=outcome.attempts, fallback=outcome.fallback, redelivered=redelivered,
        supersededBy=superseded_by, failedUids=outcome.failed_uids,
        receivedAt=rfc3339(received), completedAt=rfc3339(completed),
    )
