"""Turning an uploaded tensor into the upload-complete response: inference, or fallback vitals.

The spec promises that upload-complete always answers `status: completed`; when the engine cannot
measure (it raises InferenceFailed, returns confidence 0, returns something unusable, or crashes) the
answer is fallback vitals drawn from the session's `fallback_config` with confidence 0.0 and a `quality`
object saying why. This module is pure (no HTTP, no database) and runs in the inference thread pool.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contract.tensor import Measurement, TensorFormatError, from_bytes
from contract.vitals import DEFAULT_FALLBACK_CONFIG, draw_fallback
from server import inference
from server.models import VITAL_KEYS

log = logging.getLogger("vitalcam.server")


@dataclass(frozen=True, slots=True)
class Outcome:
    """The upload-complete body, and whether it came from the engine (status `completed`) or not (`failed`)."""

    body: dict[str, Any]
    measured: bool


InferFn = Callable[[Measurement, Mapping[str, Any] | None], inference.InferenceResult]


def default_infer(
    measurement: Measurement, demographics: Mapping[str, Any] | None
) -> inference.InferenceResult:
    """The engine behind the inference contract, looked up at call time so it can be swapped in place."""
    return inference.infer(measurement, demographics)


def process_upload(
    session_id: str,
    payload: bytes,
    demographics: Mapping[str, Any] | None,
    fallback_config: Mapping[str, Any],
    infer: InferFn = default_infer,
) -> Outcome:
    """Read the stored tensor, run inference, and build the response; never raises for bad data."""
    started_s = time.perf_counter()
    try:
        measurement = from_bytes(payload)
        result = infer(measurement, demographics)
        vitals = _checked_vitals(result.vitals)
        quality = _jsonable(dict(result.quality))
    except inference.InferenceFailed as exc:
        return fallback_body(session_id, fallback_config, exc.reason, exc.message)
    except TensorFormatError as exc:  # validated at upload; only a format-module change could get here
        return fallback_body(session_id, fallback_config, "INVALID_TENSOR", str(exc))
    except _UnusableVitals as exc:
        return fallback_body(session_id, fallback_config, "INTERNAL", str(exc))
    except Exception:
        log.exception("inference crashed for session %s", session_id)
        return fallback_body(
            session_id, fallback_config, "INTERNAL", "the inference engine failed unexpectedly"
        )
    if vitals["confidence"] <= 0.0:
        extra = quality if isinstance(quality, dict) else {}
        return fallback_body(
            session_id,
            fallback_config,
            "LOW_CONFIDENCE",
            "inference confidence was 0; returning fallback vitals",
            extra,
        )
    processing_time_ms = round((time.perf_counter() - started_s) * 1000.0, 1)
    body = {
        "session_id": session_id,
        "status": "completed",
        "vitals": vitals,
        "processing_time_ms": processing_time_ms,
        "quality": quality,
    }
    return Outcome(body=body, measured=True)


def fallback_vitals(session_id: str, fallback_config: Mapping[str, Any]) -> dict[str, float]:
    """Uniform draws from each range (`contract.vitals.draw_fallback`), seeded by the session id so a
    retry sees the same numbers; a range the session's config lacks comes from the spec's defaults."""
    ranges = {
        key: (float(value["min"]), float(value["max"]))
        for key, value in {**DEFAULT_FALLBACK_CONFIG, **fallback_config}.items()
        if isinstance(value, Mapping)
    }
    drawn = draw_fallback(ranges, random.Random(session_id))
    vitals: dict[str, float] = {key: value for key, value in drawn.items() if value is not None}
    vitals["confidence"] = float(fallback_config.get("confidence", 0.0))
    return vitals


def fallback_body(
    session_id: str,
    fallback_config: Mapping[str, Any],
    reason: str,
    message: str,
    extra_quality: Mapping[str, Any] | None = None,
) -> Outcome:
    quality = {**(extra_quality or {}), "reason": reason, "message": message, "fallback": True}
    body = {
        "session_id": session_id,
        "status": "completed",
        "vitals": fallback_vitals(session_id, fallback_config),
        "quality": quality,
    }
    return Outcome(body=body, measured=False)


class _UnusableVitals(Exception):
    pass


def _checked_vitals(vitals: Mapping[str, Any]) -> dict[str, float]:
    """Exactly the spec's keys as finite floats; anything else means the engine broke its contract."""
    missing = [k for k in VITAL_KEYS if k not in vitals]
    if missing:
        raise _UnusableVitals(f"inference returned no {', '.join(missing)}")
    checked: dict[str, float] = {}
    for key in VITAL_KEYS:
        try:
            value = float(vitals[key])
        except (TypeError, ValueError):
            raise _UnusableVitals(f"inference returned a non-numeric {key}") from None
        if not math.isfinite(value):
            raise _UnusableVitals(f"inference returned a non-finite {key}")
        checked[key] = value
    checked["confidence"] = min(1.0, max(0.0, checked["confidence"]))
    return checked


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays become plain JSON values; NaN and inf become null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
