"""SpO2 and blood pressure: population priors, not measurements.

No validated calibration-free method measures SpO2 or blood pressure from an RGB face video. SpO2 by
ratio-of-ratios needs a per-device calibration line SpO2 = A − B·RoR fitted against a reference oximeter
(and RGB cameras lack the 660/940 nm bands pulse oximeters use), and cuffless BP from pulse features needs
per-person calibration. So we report priors, label them as such, and cap their confidence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from server.inference.signals import bandpass

SPO2_PRIOR_PCT: Final = 97.0
SPO2_RANGE_PCT: Final = (70.0, 100.0)
SPO2_PRIOR_CONFIDENCE: Final = 0.05
SPO2_MAX_CONFIDENCE: Final = 0.2
BP_DEFAULT_MMHG: Final = (120.0, 80.0)
BP_DEMOGRAPHIC_CONFIDENCE: Final = 0.08
BP_DEFAULT_CONFIDENCE: Final = 0.03
SYSTOLIC_RANGE_MMHG: Final = (90.0, 160.0)
DIASTOLIC_RANGE_MMHG: Final = (55.0, 100.0)
SPO2_CALIBRATION_ENV: Final = "VITALCAM_SPO2_CALIBRATION"

# Mean systolic/diastolic (mmHg) of US adults by age band and sex, rounded from NHANES 2001–2008
# (Wright et al., National Health Statistics Reports no. 35, 2011). Age bands are [lower, upper) years.
BP_TABLE: Final[tuple[tuple[int, int, str, float, float], ...]] = (
    (18, 40, "M", 119.0, 71.0),
    (18, 40, "F", 110.0, 68.0),
    (40, 60, "M", 124.0, 77.0),
    (40, 60, "F", 122.0, 74.0),
    (60, 200, "M", 131.0, 69.0),
    (60, 200, "F", 136.0, 67.0),
)
# Below 18 the adult table does not apply; a conservative adolescent mean.
BP_UNDER_18_MMHG: Final = (112.0, 66.0)


@dataclass(frozen=True, slots=True)
class BloodPressurePrior:
    systolic_mmhg: float
    diastolic_mmhg: float
    basis: str
    confidence: float


def blood_pressure_prior(demographics: Mapping[str, Any] | None) -> BloodPressurePrior:
    """Age/sex table value when demographics give an age; sex-averaged when sex is absent or not M/F."""
    age = _number(demographics, "age")
    sex = str((demographics or {}).get("sex", "")).strip().upper()[:1]
    if age is None or not 0 < age < 130:
        sys_, dia = BP_DEFAULT_MMHG
        return BloodPressurePrior(sys_, dia, "default 120/80 (no age given)", BP_DEFAULT_CONFIDENCE)
    if age < 18:
        sys_, dia = BP_UNDER_18_MMHG
        basis = "adolescent prior"
    else:
        known_sex = sex in ("M", "F")
        rows = [row for row in BP_TABLE if row[0] <= age < row[1] and (not known_sex or row[2] == sex)]
        sys_ = float(np.mean([r[3] for r in rows]))
        dia = float(np.mean([r[4] for r in rows]))
        basis = f"NHANES 2001-2008 mean, age {rows[0][0]}-{rows[0][1] - 1}" + (
            f", sex {sex}" if known_sex else ", both sexes"
        )
    sys_ = float(np.clip(sys_, *SYSTOLIC_RANGE_MMHG))
    dia = float(np.clip(dia, *DIASTOLIC_RANGE_MMHG))
    return BloodPressurePrior(sys_, dia, basis, BP_DEMOGRAPHIC_CONFIDENCE)


def _number(demographics: Mapping[str, Any] | None, key: str) -> float | None:
    if not demographics or demographics.get(key) is None:
        return None
    try:
        value = float(demographics[key])
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def spo2_calibration_from_env() -> tuple[float, float] | None:
    """(A, B) from VITALCAM_SPO2_CALIBRATION="A,B" when set and well formed, else None."""
    text = os.environ.get(SPO2_CALIBRATION_ENV, "").strip()
    if not text:
        return None
    try:
        a, b = (float(part) for part in text.split(","))
    except ValueError:
        return None
    return (a, b) if np.isfinite(a) and np.isfinite(b) else None


def ratio_of_ratios(rgb: np.ndarray, valid: np.ndarray, weights: np.ndarray, fs_hz: float) -> float:
    """Red/blue ratio of ratios (AC_red/DC_red)/(AC_blue/DC_blue) over the pulse band, region-weighted.

    AC is the std of the 0.7–3.5 Hz band-passed channel, DC its mean. A diagnostic only: turning it into
    SpO2 needs a calibration line fitted for the camera.
    """
    values, used = [], []
    for r in range(rgb.shape[0]):
        if weights[r] <= 0 or int(valid[r].sum()) < 10:
            continue
        red, blue = rgb[r, :, 0], rgb[r, :, 2]
        dc_r, dc_b = float(red[valid[r]].mean()), float(blue[valid[r]].mean())
        if dc_r <= 0 or dc_b <= 0:
            continue
        ac = bandpass(np.stack([red / dc_r, blue / dc_b]) - 1.0, 0.7, 3.5, fs_hz)
        ac_r, ac_b = float(ac[0, valid[r]].std()), float(ac[1, valid[r]].std())
        if ac_b > 0:
            values.append(ac_r / ac_b)
            used.append(weights[r])
    if not values:
        return float("nan")
    return float(np.average(values, weights=used))


@dataclass(frozen=True, slots=True)
class Spo2Estimate:
    spo2_pct: float
    basis: str
    confidence: float


def spo2_estimate(ror: float, calibration: tuple[float, float] | None, hr_confidence: float) -> Spo2Estimate:
    """97 % prior; with a configured camera calibration, A − B·RoR clamped to 70–100 % (confidence ≤ 0.2)."""
    if calibration is None or not np.isfinite(ror):
        return Spo2Estimate(SPO2_PRIOR_PCT, "prior (no calibration configured)", SPO2_PRIOR_CONFIDENCE)
    a, b = calibration
    value = float(np.clip(a - b * ror, *SPO2_RANGE_PCT))
    return Spo2Estimate(value, f"calibrated A={a:g}, B={b:g}", SPO2_MAX_CONFIDENCE * float(hr_confidence))
