"""Confidence: how much a vital deserves to be believed, from signal evidence only.

Heart-rate confidence is a product of factors in 0..1, each measuring a different way the estimate can
be wrong: spectral SNR (logistic around 0 dB, de Haan & Jeanne 2013 SNR), consistency of the 10 s HR
track with the whole-record HR (a real pulse is stable, a noise peak wanders), agreement between
regions (the forehead and cheeks see the same heart), face motion in the pulse band, and coverage.
Every factor is a smooth, monotone function of its input, so more noise on the same video can only
lower the confidence; on pure noise the median confidence is 0.01 and the highest of 100 simulated records 0.07.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

HR_TOLERANCE_BPM: Final = 4.0
MOTION_SCALE: Final = 0.02
MIN_COVERAGE: Final = 0.5
# Logistic models of P(|HR error| <= 5 bpm) from the signal evidence, fitted on real and rendered video
# (docs/vitals.md, "Confidence calibration", gives the data and the reliability curve). The first uses
# the face halves' split-half coherence; tensors without both halves get the second.
HR_MODEL_SPLIT: Final = {
    "intercept": -3.860,
    "margin": 3.000,
    "split_half_held": 2.153,
    "support": 0.542,
    "sharpness_db": 0.149,
    "roughness_bpm": -1.320,
}
HR_MODEL_PLAIN: Final = {
    "intercept": -2.969,
    "margin": 3.064,
    "support": 1.508,
    "sharpness_db": 0.156,
    "roughness_bpm": -2.185,
}
NOISE_FLOOR: Final = 0.15
HRV_SNR_CENTER_DB: Final = 6.0
HRV_SNR_SCALE_DB: Final = 1.0
BEAT_JITTER_REF_MS: Final = 30.0
BEAT_HR_TOLERANCE_BPM: Final = 2.0


def hr_probability(features: dict[str, float | None]) -> float:
    """P(|error| <= 5 bpm) from the evidence features, by the fitted logistic model that applies."""
    model = HR_MODEL_SPLIT if features.get("split_half_held") is not None else HR_MODEL_PLAIN
    z = model["intercept"] + sum(w * float(features[k] or 0.0) for k, w in model.items() if k != "intercept")
    return float(1.0 / (1.0 + np.exp(-z)))


def hr_evidence(features: dict[str, float | None]) -> float:
    """The calibrated probability with the noise floor taken off: (p - floor) / (1 - floor), at least 0.

    Readings of videos without any pulse reach p = 0.15 at their 90th percentile on the calibration
    data; a probability that noise reaches that often is no evidence of a pulse, so it maps to 0, and
    above the floor the scale is stretched back to 1 (p = 0.5 becomes 0.41: a little more cautious).
    """
    return float(max(0.0, (hr_probability(features) - NOISE_FLOOR) / (1.0 - NOISE_FLOOR)))


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
    """The heart-rate confidence and the factors it is the product of (all 0..1), with the features."""

    value: float
    factors: dict[str, float]


def heart_rate_confidence(
    *,
    snr_db: float,
    support: float,
    margin: float,
    sharpness_db: float,
    roughness_bpm: float,
    split_half: float | None,
    whole_snr_db: float,
    split_half_held: float | None = None,
    agreement: float,
    motion_level: float,
    coverage: float,
) -> HrConfidence:
    """Calibrated evidence × motion × coverage.

    The evidence is the fitted probability that the reading is within 5 bpm (`hr_evidence`), from the
    track's margin over the best path away from it (`pulse.track_margin`), the face halves' coherence
    along it (`pulse.split_half_coherence`) and its SNR. Motion and coverage are not in the calibration
    data (the development videos are of seated, visible people), so they stay explicit penalties. The
    other features (support, whole-record SNR, region agreement) are reported for diagnosis only: on
    the calibration data they added nothing once margin and coherence were known.
    """
    features: dict[str, float | None] = {
        "snr_db": float(snr_db),
        "margin": float(margin),
        "sharpness_db": float(sharpness_db),
        "roughness_bpm": float(roughness_bpm),
        "split_half": None if split_half is None else float(split_half),
        "split_half_held": None if split_half_held is None else float(split_half_held),
        "support": float(np.clip(support, 0.0, 1.0)),
        "whole_snr_db": float(whole_snr_db),
        "agreement": float(np.clip(agreement, 0.0, 1.0)),
    }
    factors = {
        "evidence": hr_evidence(features),
        "motion": motion_factor(motion_level),
        "coverage": coverage_factor(coverage),
    }
    value = float(np.clip(np.prod(list(factors.values())), 0.0, 1.0))
    return HrConfidence(
        value=value, factors={**factors, **{k: v for k, v in features.items() if v is not None}}
    )


@dataclass(frozen=True, slots=True)
class HrvConfidence:
    """The HRV confidence and the beat-level evidence it is the product of (all 0..1).

    `jitter_ms` is the beat-timing error predicted from how alike the beats look (see `beat_jitter_ms`).
    """

    value: float
    snr: float
    timing: float
    share: float
    agreement: float
    heart_rate: float
    jitter_ms: float


def beat_jitter_ms(template_r: float, ibi_ms: float) -> float:
    """Beat-timing error (ms) predicted from the median beat-to-template correlation r.

    A beat whose waveform is signal plus noise at ratio r²/(1 − r²) has its phase displaced by about
    √((1 − r²)/r²) radians, i.e. that fraction of the interval over 2π. It overestimates the error of a
    clean beat (the template keeps some noise) but it ranks records by timing quality, which the
    spectral SNR cannot: crf 3 H.264 keeps a 4.6 dB peak while its beats scatter by tens of ms.
    """
    if not (np.isfinite(template_r) and template_r > 0 and ibi_ms > 0):
        return float("inf")
    r2 = min(float(template_r) ** 2, 1.0)
    return float(ibi_ms * np.sqrt((1.0 - r2) / r2) / (2.0 * np.pi))


def hrv_confidence(
    *,
    hr_confidence: float,
    snr_db: float,
    n_clean: int,
    n_expected: float,
    beat_hr_bpm: float,
    spectral_hr_bpm: float,
    template_r: float,
    min_clean: int,
) -> HrvConfidence:
    """Confidence in SDNN from beat-level evidence, not from the HR confidence alone.

    SDNN is the spread of beat intervals, so every millisecond of beat-timing noise adds to it: on our
    rendered videos an SDNN 20–140 ms too high came with HR still within 1 bpm and HR confidence up
    to 0.94. The factors: pulse SNR through a logistic centred 6 dB higher than the HR one (timing needs
    a cleaner wave than a spectral peak; below ~5 dB SDNN errors exceeded 20 ms on video), the timing
    factor 1/(1 + (jitter/30 ms)⁴) from `beat_jitter_ms`, the share of expected beats that survived
    rejection (^1.5), agreement of the beat-derived HR with the spectral HR (Gaussian, σ = 2 bpm: missed
    or extra beats shift it), and the HR confidence itself (beats of a wrong rate are wrong beats).
    Capped at 0.2 below `min_clean` clean intervals.
    """
    ibi_ms = 60000.0 / max(spectral_hr_bpm, 1.0)
    jitter = beat_jitter_ms(template_r, ibi_ms)
    factors = {
        "snr": float(1.0 / (1.0 + np.exp(-(snr_db - HRV_SNR_CENTER_DB) / HRV_SNR_SCALE_DB))),
        "timing": float(1.0 / (1.0 + (jitter / BEAT_JITTER_REF_MS) ** 4)) if np.isfinite(jitter) else 0.0,
        "share": float(np.clip(n_clean / max(n_expected, 1.0), 0.0, 1.0)) ** 1.5,
        "agreement": float(np.exp(-0.5 * ((beat_hr_bpm - spectral_hr_bpm) / BEAT_HR_TOLERANCE_BPM) ** 2))
        if np.isfinite(beat_hr_bpm)
        else 0.0,
        "heart_rate": float(np.clip(hr_confidence, 0.0, 1.0)),
    }
    value = float(np.prod(list(factors.values())))
    if n_clean < min_clean:
        value = min(value, 0.2)
    return HrvConfidence(value=float(np.clip(value, 0.0, 1.0)), jitter_ms=jitter, **factors)
