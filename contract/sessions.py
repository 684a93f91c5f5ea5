"""Session statuses of the sessions API and the transitions between them, as one table.

The server's session service refuses any change of status this table does not list, and the client can
tell from the same table which statuses are final (stop polling) and which may still change. The spec
names the six statuses; the arrows are ours:

```
created ──► uploading ──► processing ──► completed ──► expired
   ▲            │  ▲           │    └──► failed ─────► expired
   └────────────┘  └───────────┘
 (a PUT that fails, or a       (inference that never finished: the process or worker died; the
  tensor refused at             job is picked up again)
  upload-complete)
created, uploading ──► expired  (the session's 30 minutes ran out)
```

`uploading` covers both "a PUT is streaming" and "the tensor is stored, waiting for upload-complete";
the server tells them apart by whether the upload has been recorded, not by a seventh status.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class SessionStatus(StrEnum):
    """The spec's session statuses; the values are the strings on the wire."""

    CREATED = "created"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


_S = SessionStatus

TRANSITIONS: Final[Mapping[SessionStatus, frozenset[SessionStatus]]] = {
    _S.CREATED: frozenset({_S.UPLOADING, _S.EXPIRED}),
    _S.UPLOADING: frozenset({_S.CREATED, _S.PROCESSING, _S.EXPIRED}),
    _S.PROCESSING: frozenset({_S.COMPLETED, _S.FAILED, _S.UPLOADING}),
    _S.COMPLETED: frozenset({_S.EXPIRED}),
    _S.FAILED: frozenset({_S.EXPIRED}),
    _S.EXPIRED: frozenset(),
}

# A result (measured or fallback) exists in these statuses; polling can stop.
RESULT_STATUSES: Final = frozenset({_S.COMPLETED, _S.FAILED})
# Nothing will change any more except expiry (and expired is the end).
SETTLED_STATUSES: Final = frozenset({_S.COMPLETED, _S.FAILED, _S.EXPIRED})

# Sessions expire this long after creation; upload URLs expire with them.
SESSION_TTL_S: Final = 1800
# The spec's advice to a client that polls a `processing` session.
POLL_INTERVAL_S: Final = 2.0


class IllegalTransition(ValueError):
    """A change of status the table does not allow: a bug in the caller, never a client's fault."""

    def __init__(self, from_status: SessionStatus, to_status: SessionStatus) -> None:
        super().__init__(f"session status cannot go from {from_status.value!r} to {to_status.value!r}")
        self.from_status = from_status
        self.to_status = to_status


def can_transition(from_status: SessionStatus | str, to_status: SessionStatus | str) -> bool:
    """Whether the table allows `from_status` → `to_status` (unknown status strings: False)."""
    try:
        return SessionStatus(to_status) in TRANSITIONS[SessionStatus(from_status)]
    except ValueError:
        return False


def check_transition(from_status: SessionStatus | str, to_status: SessionStatus | str) -> None:
    """Raise IllegalTransition unless the table allows the change (ValueError for unknown strings)."""
    source, target = SessionStatus(from_status), SessionStatus(to_status)
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(source, target)


__all__ = [
    "POLL_INTERVAL_S",
    "RESULT_STATUSES",
    "SESSION_TTL_S",
    "SETTLED_STATUSES",
    "TRANSITIONS",
    "IllegalTransition",
    "SessionStatus",
    "can_transition",
    "check_transition",
]
