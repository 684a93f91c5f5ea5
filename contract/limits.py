"""Rules that the SDK, the CLI and the backend must apply identically (one copy, imported by all).

The tensor's own limits (duration, frame rate, sizes) live with the format in `contract.tensor`.
"""

from __future__ import annotations

from typing import Final

# Demographics: whole years, as the spec's `age` field and the blood-pressure prior's table accept.
MIN_AGE_YEARS: Final = 1
MAX_AGE_YEARS: Final = 120
SEXES: Final = ("M", "F", "X")
FITZPATRICK_TYPES: Final = range(1, 7)

# A measurement needs this much usable (face present, well lit) video for the engine to report vitals;
# shorter stretches give fallback vitals with reason INSUFFICIENT_DATA.
MIN_USABLE_S: Final = 15.0
# The capture length a user may ask for: a second above the usable minimum (the first frames go to
# settling), up to the tensor's maximum duration.
MIN_CAPTURE_S: Final = 16.0
MAX_CAPTURE_S: Final = 180.0

# The engine interpolates across a frame gap up to this long (or 2.5 frame intervals, if longer); a longer
# gap is lost from the measurement. Irregular timing within it costs nothing (timestamps are real), so
# the live "frame rate" hint fires only on gaps the engine cannot bridge.
MAX_BRIDGED_GAP_S: Final = 0.5
BRIDGED_GAP_INTERVALS: Final = 2.5

# A measured vital is "reliable" at or above this confidence. The heart-rate confidence is the
# calibrated probability of being within 5 bpm, so above one half a reading is more likely right than
# wrong; below it clients show the value as unreliable.
RELIABLE_CONFIDENCE: Final = 0.5


def age_is_valid(age: object) -> bool:
    """A whole number of years in MIN_AGE_YEARS..MAX_AGE_YEARS (bools are not ages)."""
    return isinstance(age, int) and not isinstance(age, bool) and MIN_AGE_YEARS <= age <= MAX_AGE_YEARS
