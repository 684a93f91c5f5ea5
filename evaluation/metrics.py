"""The reference heart rate from a contact sensor, windows, and the metrics rPPG papers report.

The reference is estimated from the contact PPG with one spectral estimator for every method and every
span (as rPPG-Toolbox does): band-pass 0.6-3.5 Hz, Hann periodogram, highest bin at 0.25 bpm spacing.
Where a dataset only gives a heart-rate series, its mean over the span is the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import signal

REFERENCE_LOW_HZ: Final = 0.6
REFERENCE_HIGH_HZ: Final = 3.5


def window_spans(duration_s: float, window_s: float | None) -> list[tuple[float, float]]:
    """Non-overlapping spans [start, end) of `window_s` from 0 (the whole record for None).

    A last partial window is dropped, as rPPG-Toolbox's chunking does, unless the record is shorter than
    one window (then there is no span of that length).
    """
    if window_s is None:
        return [(0.0, duration_s)]
    count = math.floor(duration_s / window_s + 1e-6)
    return [(k * window_s, (k + 1) * window_s) for k in range(count)]


def parse_windows(text: str) -> list[float | None]:
    """'whole,30,10' -> [None, 30.0, 10.0]; raises ValueError naming a bad item."""
    out: list[float | None] = []
    for item in (part.strip() for part in text.split(",")):
        if item == "whole":
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"window {item!r} is neither 'whole' nor a number of seconds") from None
        if not 5.0 <= value <= 180.0:
            raise ValueError(f"window {item} s is outside 5..180 s")
        out.append(value)
    if not out:
        raise ValueError("no windows given")
    return out


def uniform(t_s: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """`x` resampled onto an even grid at its median sampling rate; returns (values, fs_hz)."""
    fs_hz = 1.0 / float(np.median(np.diff(t_s)))
    grid = np.arange(t_s[0], t_s[-1], 1.0 / fs_hz)
    return np.interp(grid, t_s, x), fs_hz


def periodogram_peak_bpm(x: np.ndarray, fs_hz: float, low_hz: float, high_hz: float) -> float:
    """Highest Hann-periodogram bin in [low_hz, high_hz] of the detrended, band-passed `x`, in bpm."""
    high = min(high_hz, 0.45 * fs_hz)
    sos = signal.butter(3, [low_hz, high], btype="bandpass", fs=fs_hz, output="sos")
    y = signal.sosfiltfilt(sos, signal.detrend(x))
    nfft = max(y.shape[0], 1 << int(np.ceil(np.log2(fs_hz * 240.0))))
    power = np.abs(np.fft.rfft(y * np.hanning(y.shape[0]), nfft)) ** 2
    f_hz = np.fft.rfftfreq(nfft, 1.0 / fs_hz)
    band = (f_hz >= low_hz) & (f_hz <= high)
    return float(f_hz[band][np.argmax(power[band])] * 60.0)


def reference_hr_bpm(t_s: np.ndarray, ppg: np.ndarray | None, hr_bpm: np.ndarray | None) -> float:
    """The reference over one span: the PPG's periodogram peak, else the mean of the HR series."""
    if ppg is not None and ppg.shape[0] >= 16 and float(np.std(ppg)) > 0:
        x, fs_hz = uniform(t_s, ppg)
        return periodogram_peak_bpm(x, fs_hz, REFERENCE_LOW_HZ, REFERENCE_HIGH_HZ)
    measured = hr_bpm[np.isfinite(hr_bpm) & (hr_bpm > 0)] if hr_bpm is not None else np.zeros(0)
    if measured.size:  # an oximeter writes 0 while it has no reading
        return float(np.mean(measured))
    return float("nan")


def snr_at_db(pulse: np.ndarray, fs_hz: float, hr_bpm: float) -> float:
    """SNR (dB) of an estimated pulse at the *reference* rate: power within 6 bpm of it and 12 bpm of its
    harmonic over the rest of 0.6-4 Hz (de Haan & Jeanne 2013, the SNR rPPG-Toolbox reports)."""
    if pulse.shape[0] < 16 or not math.isfinite(hr_bpm) or float(np.std(pulse)) == 0:
        return float("nan")
    nfft = max(pulse.shape[0], 1 << int(np.ceil(np.log2(fs_hz * 240.0))))
    power = np.abs(np.fft.rfft((pulse - pulse.mean()) * np.hanning(pulse.shape[0]), nfft)) ** 2
    f_hz = np.fft.rfftfreq(nfft, 1.0 / fs_hz)
    f0 = hr_bpm / 60.0
    band = (f_hz >= 0.6) & (f_hz <= 4.0)
    near = (np.abs(f_hz - f0) <= 0.1) | (np.abs(f_hz - 2 * f0) <= 0.2)
    signal_power, noise_power = float(power[band & near].sum()), float(power[band & ~near].sum())
    if signal_power <= 0 or noise_power <= 0:
        return float("nan")
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass(frozen=True, slots=True)
class Summary:
    """Accuracy of one method at one window length (bpm unless named otherwise)."""

    n: int  # spans with a reference
    n_readings: int  # spans the method produced a heart rate for
    mae: float
    rmse: float
    mape_pct: float
    pearson_r: float
    snr_db: float
    within_3: float  # share of readings within 3 bpm
    within_5: float


def summarize(estimates: Sequence[float], references: Sequence[float], snrs: Sequence[float]) -> Summary:
    """Metrics over the spans where both an estimate and a reference exist (NaN marks a missing one)."""
    est = np.asarray(estimates, dtype=np.float64)
    ref = np.asarray(references, dtype=np.float64)
    has_ref = np.isfinite(ref)
    ok = has_ref & np.isfinite(est)
    err = est[ok] - ref[ok]
    snr = np.asarray(snrs, dtype=np.float64)[ok]
    nan = float("nan")
    r = nan
    if ok.sum() >= 3 and np.std(est[ok]) > 0 and np.std(ref[ok]) > 0:
        r = float(np.corrcoef(est[ok], ref[ok])[0, 1])
    return Summary(
        n=int(has_ref.sum()),
        n_readings=int(ok.sum()),
        mae=float(np.mean(np.abs(err))) if err.size else nan,
        rmse=float(np.sqrt(np.mean(err**2))) if err.size else nan,
        mape_pct=float(np.mean(np.abs(err) / ref[ok]) * 100.0) if err.size else nan,
        pearson_r=r,
        snr_db=float(np.nanmean(snr)) if np.isfinite(snr).any() else nan,
        within_3=float(np.mean(np.abs(err) <= 3.0)) if err.size else nan,
        within_5=float(np.mean(np.abs(err) <= 5.0)) if err.size else nan,
    )
