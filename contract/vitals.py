"""The vitals of the spec's `vitals` object, as one table, and the fallback draw both sides use.

Adding a vital is one row here plus its estimator in the engine: the server's response model, the
result validation, the fallback draw and the CLI's table all iterate `VITALS`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal


@dataclass(frozen=True, slots=True)
class Vital:
    """One vital: its key in the spec's `vitals` object, how to show it, and what the camera can do.

    `kind` is "measured" when the camera measures it, "prior" when no calibration-free RGB method
    exists and the value is a population prior. `fallback_key` names the spec's `fallback_config`
    range it is drawn from (for diastolic BP that range is an offset below systolic).
    """

    key: str
    label: str
    unit: str
    decimals: int
    kind: Literal["measured", "prior"]
    fallback_key: str


VITALS: Final = (
    Vital("heart_rate", "Heart rate", "bpm", 0, "measured", "heart_rate"),
    Vital("respiratory_rate", "Respiratory rate", "breaths/min", 0, "measured", "respiratory_rate"),
    Vital("hrv", "HRV (SDNN)", "ms", 1, "measured", "hrv"),
    Vital("spo2", "SpO2", "%", 1, "prior", "spo2"),
    Vital("systolic_bp", "Systolic BP", "mmHg", 0, "prior", "systolic_bp"),
    Vital("diastolic_bp", "Diastolic BP", "mmHg", 0, "prior", "diastolic_bp_offset"),
)
VITAL_KEYS: Final = tuple(v.key for v in VITALS)
BY_KEY: Final = {v.key: v for v in VITALS}

# Diastolic pressure never drops below this in a fallback draw, whatever the offset range says.
MIN_DIASTOLIC_MMHG: Final = 30

# The spec's example fallback ranges, used when a key has no fallback_config of its own.
DEFAULT_FALLBACK_CONFIG: Final[dict[str, Any]] = {
    "heart_rate": {"min": 62, "max": 98},
    "hrv": {"min": 25, "max": 70},
    "respiratory_rate": {"min": 13, "max": 19},
    "spo2": {"min": 96, "max": 99},
    "systolic_bp": {"min": 109, "max": 134},
    "diastolic_bp_offset": {"min": 51, "max": 66},
    "confidence": 0.0,
}


def draw_fallback(ranges: Mapping[str, tuple[float, float]], rng: random.Random) -> dict[str, float | None]:
    """Fallback vitals drawn uniformly from `ranges` ({fallback_key: (min, max)}), rounded per the table.

    Diastolic BP = systolic minus a draw from the `diastolic_bp_offset` range (the pulse pressure), never
    below MIN_DIASTOLIC_MMHG. A vital whose range is missing is None. The draws happen in table order, so
    one seed always gives the same vitals.
    """
    out: dict[str, float | None] = {}
    for vital in VITALS:
        bounds = ranges.get(vital.fallback_key)
        if bounds is None:
            out[vital.key] = None
            continue
        low, high = min(bounds), max(bounds)
        value = round(rng.uniform(low, high), vital.decimals)
        out[vital.key] = int(value) if vital.decimals == 0 else value
    systolic, offset = out["systolic_bp"], out["diastolic_bp"]
    out["diastolic_bp"] = (
        None if systolic is None or offset is None else max(MIN_DIASTOLIC_MMHG, systolic - offset)
    )
    return out
