"""rPPG inference: vitals from a vitalcam tensor (numpy and scipy only).

Contract with the server (the engine itself lands with the inference issue):
`infer(measurement, demographics) -> InferenceResult`, raising `InferenceFailed(reason, message)` when the
data cannot support a measurement; the server then answers with fallback vitals and confidence 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from preprocess.tensor import Measurement

FailureReason = Literal["NO_FACE", "TOO_SHORT", "LOW_COVERAGE", "INVALID_TIMESTAMPS", "INTERNAL"]


class InferenceFailed(Exception):
    """The tensor cannot support a measurement; `reason` is one of FailureReason."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """`vitals` uses the spec's keys and units; `quality` is the JSON-ready detail behind them."""

    vitals: dict[str, float]
    quality: dict[str, Any] = field(default_factory=dict)


def infer(measurement: Measurement, demographics: Mapping[str, Any] | None = None) -> InferenceResult:
    raise InferenceFailed("INTERNAL", "the inference engine is not installed yet")


__all__ = ["FailureReason", "InferenceFailed", "InferenceResult", "infer"]
