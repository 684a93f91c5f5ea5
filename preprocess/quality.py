"""Per-frame quality state, transient warnings for the user, and the end-of-measurement verdict.

Warnings are what the live preview shows ("more light", "hold still"); they never stop a measurement.
Only `finish()` decides, from the whole recording, whether there is enough usable data to send.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from contract.limits import BRIDGED_GAP_INTERVALS, MAX_BRIDGED_GAP_S, MIN_CAPTURE_S, MIN_USABLE_S

LOW_LIGHT: Final = "LOW_LIGHT"
OVEREXPOSED: Final = "OVEREXPOSED"
MOTION: Final = "MOTION"
FACE_NOT_FOUND: Final = "FACE_NOT_FOUND"
FACE_TOO_SMALL: Final = "FACE_TOO_SMALL"
FACE_OFF_CENTER: Final = "FACE_OFF_CENTER"
FRAME_RATE_UNSTABLE: Final = "FRAME_RATE_UNSTABLE"

MESSAGES: Final = {
    LOW_LIGHT: "The face is too dark: add light in front of you.",
    OVEREXPOSED: "Part of the face is overexposed: reduce direct light or turn away from it.",
    MOTION: "Too much movement: hold your head still.",
    FACE_NOT_FOUND: "No face found: look into the camera.",
    FACE_TOO_SMALL: "The face is too small: move closer to the camera.",
    FACE_OFF_CENTER: "The face is off centre: centre it in the frame.",
    FRAME_RATE_UNSTABLE: "Frames are being lost: close other apps using the camera or CPU.",
}

# Reasons `QualityTooLow` carries.
NO_FRAMES: Final = "NO_FRAMES"
NO_FACE: Final = "NO_FACE"
TOO_SHORT: Final = "TOO_SHORT"


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """When a warning fires. Defaults are set for typical webcams at 30 fps."""

    low_light_luma: float = 50.0  # mean face luma (0..255) below which the pulse drowns in noise
    overexposed_share: float = 0.05  # share of face pixels clipped (>= 250)
    motion_face_widths_per_s: float = 0.5  # smoothed face speed
    min_face_area_share: float = 0.02  # face box area / frame area
    max_center_offset_share: float = 0.35  # |centre - frame centre| / frame side, either axis
    max_lost_share: float = 0.05  # share of the recent time in frame gaps the engine cannot bridge


@dataclass(frozen=True, slots=True)
class QualityState:
    """What we know about one frame's usability; units in the names."""

    brightness_luma: float  # mean Y (0..255) of the face region, or of the whole frame without a face
    clipped_share: float  # share of those pixels with a channel >= 250
    face_present: bool
    face_area_share: float  # face box area / frame area (0 without a face)
    face_speed_widths_per_s: float  # smoothed face centre speed in face widths per second
    interval_jitter: float  # std / mean of the recent frame intervals (0 until enough frames)
    lost_share: float = 0.0  # share of the recent time in gaps too long to bridge (`lost_share`)


@dataclass(frozen=True, slots=True)
class QualityWarning:
    """A transient condition worth telling the user about on this frame."""

    code: str
    message: str


class QualityTooLow(Exception):
    """Not enough usable data for a measurement; `reason` is a short code, str() explains it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def frame_warnings(
    state: QualityState,
    center_offset_share: tuple[float, float] | None,
    thresholds: QualityThresholds,
    *,
    face_mode: bool,
    jitter_known: bool,
) -> list[QualityWarning]:
    """The warnings this frame's quality state deserves."""
    codes: list[str] = []
    if state.brightness_luma < thresholds.low_light_luma:
        codes.append(LOW_LIGHT)
    if state.clipped_share > thresholds.overexposed_share:
        codes.append(OVEREXPOSED)
    if face_mode:
        if not state.face_present:
            codes.append(FACE_NOT_FOUND)
        else:
            if state.face_speed_widths_per_s > thresholds.motion_face_widths_per_s:
                codes.append(MOTION)
            if state.face_area_share < thresholds.min_face_area_share:
                codes.append(FACE_TOO_SMALL)
            if (
                center_offset_share is not None
                and max(abs(center_offset_share[0]), abs(center_offset_share[1]))
                > thresholds.max_center_offset_share
            ):
                codes.append(FACE_OFF_CENTER)
    if jitter_known and state.lost_share > thresholds.max_lost_share:
        codes.append(FRAME_RATE_UNSTABLE)
    return [QualityWarning(code, MESSAGES[code]) for code in codes]


def lost_share(intervals_s: Sequence[float]) -> float:
    """The share of the time these frame intervals span that falls in gaps the engine will not bridge.

    A webcam's intervals wobble (33 ms ± 15 ms under load is common) without harm: every frame carries its
    real timestamp and the engine resamples. What a measurement suffers from is a gap it cannot bridge,
    so that is what the frame-rate hint reports, not the wobble. Plain Python: it runs on every frame over
    the last few dozen intervals, where numpy's per-call overhead is most of the cost.
    """
    if len(intervals_s) == 0:
        return 0.0
    bridge_s = max(MAX_BRIDGED_GAP_S, BRIDGED_GAP_INTERVALS * statistics.median(intervals_s))
    total_s = math.fsum(intervals_s)
    return math.fsum(i for i in intervals_s if i > bridge_s) / total_s if total_s > 0 else 0.0


def interval_jitter(intervals_s: Sequence[float]) -> float:
    """Standard deviation over mean of the frame intervals (population, like numpy's default)."""
    n = len(intervals_s)
    mean = math.fsum(intervals_s) / n
    variance = math.fsum((i - mean) ** 2 for i in intervals_s) / n
    return math.sqrt(variance) / max(mean, 1e-9)


# A recording this dark in at least this share of its frames failed because of the light, whatever the
# pipeline's own reason code says (too dark a face gives no skin pixels, or no face at all).
DARK_SHARE_CAUSE: Final = 0.3


def shortfall_message(
    message: str,
    *,
    seconds_seen: float,
    dark_share: float,
    replay: bool,
    truncated: str | None = None,
) -> str:
    """Why a recording gave too little usable signal, naming the cause the person can act on.

    The pipeline only knows how much usable signal it got; the caller knows how long the recording was,
    how dark it was and whether the file was cut short, so the person hears "the video is 3 s long" and
    not "hold still for longer". One minimum is quoted everywhere: the capture length the CLI accepts.
    `truncated` completes "the file is ...", e.g. "truncated: its header says 30.0 s".
    """
    need = f"at least {MIN_CAPTURE_S:g} s are needed"
    if truncated:
        return f"the file is {truncated}, and only {seconds_seen:.1f} s could be read; {need}."
    if seconds_seen < MIN_USABLE_S:
        what = (
            f"the video is {seconds_seen:.1f} s long"
            if replay
            else f"only {seconds_seen:.1f} s were captured"
        )
        return f"{what}; {need}."
    if dark_share >= DARK_SHARE_CAUSE:
        return (
            f"the face is too dark in {100 * dark_share:.0f} % of the frames: add light in front of you "
            "(a lamp or a window facing you) and measure again."
        )
    return message
