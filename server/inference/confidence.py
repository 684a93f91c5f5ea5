"""Confidence: how much a vital deserves to be believed, from signal evidence only.

Heart-rate confidence is a product of factors in 0..1, each measuring a different way the estimate can
be wrong: spectral SNR (logistic around 0 dB, de Haan & Jeanne 2013 SNR), consistency of the 10 s HR
track with the whole-record HR (a real pulse is stable, a noise peak wanders), agreement between
regions (the forehead and cheeks see the same heart), face motion in the pulse band, and coverage.
Every factor is a smooth, monotone function of its input, so more noise on the same video can only
lower the confidence; on pure noise the SNR factor alone sits near 0.05 and the others pull it lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

SNR_CENTER_DB: Final = 0.0
SNR_SCALE_DB: Final = 1.5
HR_TOLERANCE_BPM: Final = 4.0
MOTION_SCALE: Final = 0.02
MIN_COVERAGE: Final = 0.5


def snr_factor(snr_db: float) -> float:
    """Logistic in the SNR: 0.5 at 0 dB, ~0.1 at −3 dB, ~0.9 at +3 dB."""
    return float(1.0 / (1.0 + np.exp(-(snr_db - SNR_CENTER_DB) / SNR_SCALE_DB)))


def closeness(values_bpm: np.ndarray, target_bpm: float, weights: np.ndarray) -> float:
    """Weighted mean of a Gaussian kernel (σ = 4 bpm) of each value's distance from the target."""
    values_bpm = np.asarray(values_bpm, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(values_bpm) & (weights > 0)
    if not ok.any():
        return 0.0
    kernel = np.exp(-0.5 * ((values_bpm[ok] - target_bpm) / HR_TOLERANCE_BPM) ** 2)
    return float(np.average(kernel, weights=weights[ok]))


def motion_factor(motion_level: float) -> float:
    """1 for a still face, 0.5 when in-band face-box motion is 2 % of face width (std)."""
    return float(1.0 / (1.0 + (motion_level / MOTION_SCALE) ** 2))


def coverage_factor(coverage: float) -> float:
    """0 at 50 % coverage rising to 1 at full coverage (square-root shaped: a few gaps cost little)."""
    return float(np.sqrt(np.clip((coverage - MIN_COVERAGE) / (1.0 - MIN_COVERAGE), 0.0, 1.0)))


@dataclass(frozen=True, slots=True)
class HrConfidence:
    """The heart-rate confidence and the factors it is the product of (all 0..1)."""

    value: float
    snr: float
    consistency: float
    agreement: float
    motion: float
    coverage: float


def heart_rate_confidence(
    snr_db: float, consistency: float, agreement: float, motion_level: float, coverage: float
) -> HrConfidence:
    """Product of the factors; consistency and agreement enter with exponents < 1 because they are noisy
    on short records and should temper, not veto, a strong SNR."""
    factors = {
        "snr": snr_factor(snr_db),
        "consistency": float(np.clip(consistency, 0.0, 1.0)),
        "agreement": float(np.clip(agreement, 0.0, 1.0)),
        "motion": motion_factor(motion_level),
        "coverage": coverage_factor(coverage),
    }
    value = (
        factors["snr"]
        * factors["consistency"] ** 0.7
        * factors["agreement"] ** 0.5
        * factors["motion"]
        * factors["coverage"]
    )
    return HrConfidence(value=float(np.clip(value, 0.0, 1.0)), **factors)


def hrv_confidence(hr_confidence: float, n_clean: int, n_expected: float, min_clean: int) -> float:
    """HR confidence cubed × share of expected beats that survived; capped at 0.2 below `min_clean` beats.

    Cubed because beat timing is far more fragile than the spectral peak: on simulated traces an HR
    confidence of 0.6 (HR still within 1 bpm) already comes with SDNN errors of 30–70 ms.
    """
    share = float(np.clip(n_clean / max(n_expected, 1.0), 0.0, 1.0))
    value = hr_confidence**3 * share**1.5
    return float(min(value, 0.2) if n_clean < min_clean else value)
