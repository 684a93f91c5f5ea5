"""The typed failure every inference stage raises when the data cannot support a measurement."""

from __future__ import annotations

from typing import Literal

FailureReason = Literal["NO_FACE", "TOO_SHORT", "LOW_COVERAGE", "INVALID_TIMESTAMPS", "INTERNAL"]


class InferenceFailed(Exception):
    """The tensor cannot support a measurement; `reason` is one of FailureReason.

    The server turns this into the spec's fallback vitals with confidence 0.0 and `quality.reason` = reason.
    """

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
