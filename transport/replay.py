"""Replaying the outbox: each pending measurement submitted again, written once for both clients.

The rules (finish an item whose result an earlier replay already saved, save a completed result before
deleting its payload, record every failure in the sidecar and go on with the next item) are one generator,
`replay_flow`: it yields each item to measure and is sent back the Result or the error. `retry_outbox`
and `aretry_outbox` only call their client's `measure()` for it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable

from transport.aio import AsyncSessionClient
from transport.client import SessionClient
from transport.errors import VitalcamError
from transport.models import Result
from transport.outbox import Outbox, OutboxItem

ReplayOutcome = tuple[OutboxItem, Result | VitalcamError]
# Yields the item to measure, is sent its Result or error, returns one outcome per item.
ReplayFlow = Generator[OutboxItem, Result | VitalcamError, list[ReplayOutcome]]


def replay_flow(outbox: Outbox, items: Iterable[OutboxItem] | None = None) -> ReplayFlow:
    """Replay `items` (default: every pending one, oldest first); see `retry_outbox` for the guarantees."""
    outcomes: list[ReplayOutcome] = []
    for item in outbox.pending() if items is None else items:
        saved = outbox.load_result(item)
        if (
            saved is not None
        ):  # an earlier replay crashed between saving and deleting: finish, do not resubmit
            outbox.remove(item)
            outcomes.append((item, saved))
            continue
        answer = yield item
        if isinstance(answer, VitalcamError):
            outbox.record_failure(item, answer)
        elif answer.status != "completed":
            answer = VitalcamError(
                f"server reported status {answer.status!r} for session {answer.session_id}"
            )
            outbox.record_failure(item, answer)
        else:
            outbox.save_result(item, answer)
            outbox.remove(item)
        outcomes.append((item, answer))
    return outcomes


def retry_outbox(
    client: SessionClient, outbox: Outbox | None = None, items: Iterable[OutboxItem] | None = None
) -> list[ReplayOutcome]:
    """Replay every pending item (or only `items`) with a fresh session; one entry per item, in order.

    An item is deleted only after a completed result was received and saved to `results/`. Failures are
    recorded in the sidecar and the item stays for the next replay; one item's failure never stops the rest
    (not even an unreadable payload file: that item is recorded as failed and the replay goes on).
    """
    flow = replay_flow(outbox or Outbox(), items)
    answer: Result | VitalcamError | None = None
    try:
        while True:
            item = flow.send(answer) if answer is not None else next(flow)
            try:
                answer = client.measure(item.payload_path, item.demographics)
            except Exception as exc:
                answer = _typed(exc)
    except StopIteration as done:
        outcomes: list[ReplayOutcome] = done.value
        return outcomes


async def aretry_outbox(
    client: AsyncSessionClient, outbox: Outbox | None = None, items: Iterable[OutboxItem] | None = None
) -> list[ReplayOutcome]:
    """`retry_outbox` for `AsyncSessionClient` (items are replayed one at a time)."""
    flow = replay_flow(outbox or Outbox(), items)
    answer: Result | VitalcamError | None = None
    try:
        while True:
            item = flow.send(answer) if answer is not None else next(flow)
            try:
                answer = await client.measure(item.payload_path, item.demographics)
            except Exception as exc:
                answer = _typed(exc)
    except StopIteration as done:
        outcomes: list[ReplayOutcome] = done.value
        return outcomes


def _typed(exc: Exception) -> VitalcamError:
    if isinstance(exc, VitalcamError):
        return exc
    error = VitalcamError(f"replay failed: {type(exc).__name__}: {str(exc)[:300]}", code="REPLAY_FAILED")
    error.__cause__ = exc
    return error


__all__ = ["ReplayOutcome", "aretry_outbox", "replay_flow", "retry_outbox"]
