"""Respiratory rate from several respiratory signals, fused by a quality-weighted median of agreeing sources.

Breathing shows up in a camera PPG in three ways (Charlton et al., "Breathing rate estimation from the
electrocardiogram and photoplethysmogram: a review", IEEE Rev. Biomed. Eng. 11, 2018): baseline
intensity (RIIV), pulse amplitude (RIAV) and beat-interval variation (RIFV, respiratory sinus
arrhythmia); the head also rises and falls with the chest (face-box vertical motion). Any one source
fails on some people and some videos, so each is scored by how concentrated its 0.1–0.5 Hz spectrum is
and only sources that agree within 3 breaths/min are fused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from server.inference.signals import bandpass, hann_power, nfft_for

RR_LOW_HZ: Final = 0.1  # 6 breaths/min
RR_HIGH_HZ: Final = 0.5  # 30 breaths/min
AGREEMENT_BPM: Final = 3.0
SERIES_FS_HZ: Final = 4.0
PEAK_HALF_WIDTH_HZ: Final = 0.04
# Concentration of a pure-noise spectrum near its maximum (band 0.08–0.6 Hz, ±0.04 Hz around the peak).
NOISE_CONCENTRATION: Final = 0.3


@dataclass(frozen=True, slots=True)
class RespSource:
    """One respiratory signal: name, estimate (breaths/min), quality 0..1, band-passed signal on `t_s`."""

    name: str
    rr_bpm: float
    quality: float
    t_s: np.ndarray
    signal: np.ndarray


def source_from_signal(name: str, t_s: np.ndarray, x: np.ndarray, fs_hz: float, weight: float) -> RespSource:
    """Band-pass 0.1–0.5 Hz, take the spectral peak and score its concentration (prominence) as quality.

    Quality = (share of 0.08–0.6 Hz power within ±0.04 Hz of the peak − the noise share) rescaled to 0..1,
    times `weight` (how far the source's carrier can be trusted, e.g. the pulse confidence for RIFV).
    """
    filtered = bandpass(x - np.mean(x), RR_LOW_HZ, RR_HIGH_HZ, fs_hz, order=2)
    nfft = nfft_for(fs_hz, x.shape[0], resolution_hz=1.0 / 600.0)
    f_hz, power = hann_power(filtered, fs_hz, nfft)
    search = (f_hz >= RR_LOW_HZ) & (f_hz <= RR_HIGH_HZ)
    k = int(np.flatnonzero(search)[np.argmax(power[search])])
    f0 = _refine(f_hz, power, k)
    band = (f_hz >= 0.08) & (f_hz <= 0.6)
    total = float(power[band].sum())
    near = float(power[band & (np.abs(f_hz - f0) <= PEAK_HALF_WIDTH_HZ)].sum())
    concentration = near / total if total > 0 else 0.0
    quality = float(np.clip((concentration - NOISE_CONCENTRATION) / (0.85 - NOISE_CONCENTRATION), 0.0, 1.0))
    return RespSource(name=name, rr_bpm=f0 * 60.0, quality=quality * float(weight), t_s=t_s, signal=filtered)


def _refine(f_hz: np.ndarray, power: np.ndarray, k: int) -> float:
    if 0 < k < power.shape[0] - 1:
        a, b, c = power[k - 1], power[k], power[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            return float(f_hz[k] + np.clip(0.5 * (a - c) / denom, -0.5, 0.5) * (f_hz[1] - f_hz[0]))
    return float(f_hz[k])


def beat_series(
    beat_t_s: np.ndarray, values: np.ndarray, t0_s: float, t1_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a per-beat series onto a uniform 4 Hz grid (linear), as RIAV/RIFV need a regular rate."""
    grid = np.arange(t0_s, t1_s, 1.0 / SERIES_FS_HZ)
    return grid, np.interp(grid, beat_t_s, values)


@dataclass(frozen=True, slots=True)
class Respiration:
    """Fused respiratory rate (breaths/min), its confidence, the agreeing sources and every source."""

    rr_bpm: float
    confidence: float
    agreeing: tuple[str, ...]
    sources: tuple[RespSource, ...]
    best: RespSource | None


def fuse(sources: list[RespSource]) -> Respiration:
    """Quality-weighted median of the largest-quality cluster of sources agreeing within 3 breaths/min.

    Confidence = 1 − Π(1 − q) over the agreeing sources, scaled by 0.6 when a single source stands alone
    (agreement between independent carriers is the best evidence a camera can give for breathing).
    """
    usable = [s for s in sources if s.quality > 0.02]
    if not usable:
        fallback = max(sources, key=lambda s: s.quality) if sources else None
        rr = fallback.rr_bpm if fallback else 15.0
        return Respiration(rr_bpm=rr, confidence=0.0, agreeing=(), sources=tuple(sources), best=fallback)
    best_cluster: list[RespSource] = []
    best_score = -1.0
    for anchor in usable:
        cluster = [s for s in usable if abs(s.rr_bpm - anchor.rr_bpm) <= AGREEMENT_BPM]
        score = sum(s.quality for s in cluster)
        if score > best_score:
            best_cluster, best_score = cluster, score
    rates = np.array([s.rr_bpm for s in best_cluster])
    weights = np.array([s.quality for s in best_cluster])
    rr = weighted_median(rates, weights)
    confidence = 1.0 - float(np.prod(1.0 - np.clip(weights, 0.0, 1.0)))
    if len(best_cluster) == 1:
        confidence *= 0.6
    best = max(best_cluster, key=lambda s: s.quality)
    return Respiration(
        rr_bpm=rr,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
        agreeing=tuple(s.name for s in best_cluster),
        sources=tuple(sources),
        best=best,
    )


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Median of `values` where each counts with its weight (interpolating at an exact half split)."""
    order = np.argsort(values)
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    half = cum[-1] / 2.0
    i = int(np.searchsorted(cum, half))
    if np.isclose(cum[i], half) and i + 1 < v.shape[0]:
        return float((v[i] + v[i + 1]) / 2.0)
    return float(v[i])
