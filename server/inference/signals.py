"""Small signal-processing primitives shared by the vitals: filters, spectra, peak refinement.

Pure functions over numpy arrays in the style of scipy.signal; frequencies in Hz unless a name says bpm.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal


@lru_cache(maxsize=32)
def _bandpass_sos(low_hz: float, high_hz: float, fs_hz: float, order: int) -> np.ndarray:
    nyquist = fs_hz / 2.0
    high = min(high_hz, 0.95 * nyquist)
    return signal.butter(order, [low_hz / nyquist, high / nyquist], btype="bandpass", output="sos")


def bandpass(x: np.ndarray, low_hz: float, high_hz: float, fs_hz: float, order: int = 3) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the last axis (zero phase keeps beat timing for HRV)."""
    sos = _bandpass_sos(round(low_hz, 6), round(high_hz, 6), round(fs_hz, 6), order)
    padlen = min(x.shape[-1] - 1, 3 * (2 * sos.shape[0] + 1) * 4)
    return signal.sosfiltfilt(sos, x, axis=-1, padlen=padlen)


def robust_clip(x: np.ndarray, n_sigma: float = 4.0) -> np.ndarray:
    """Clip samples beyond `n_sigma` robust standard deviations (MAD): motion spikes must not own the spectrum."""
    med = np.median(x, axis=-1, keepdims=True)
    mad = np.median(np.abs(x - med), axis=-1, keepdims=True) * 1.4826
    mad = np.where(mad > 0, mad, 1.0)
    return np.clip(x, med - n_sigma * mad, med + n_sigma * mad)


def unit_std(x: np.ndarray) -> np.ndarray:
    """Scale each row to unit standard deviation (rows that are constant stay zero)."""
    sd = np.std(x, axis=-1, keepdims=True)
    return np.where(sd > 0, x / np.where(sd > 0, sd, 1.0), 0.0)


def nfft_for(fs_hz: float, n: int, resolution_hz: float = 1.0 / 240.0) -> int:
    """FFT length giving at least `resolution_hz` bin spacing (default 0.25 bpm) and at least `n` points."""
    need = max(n, int(np.ceil(fs_hz / resolution_hz)))
    return 1 << int(np.ceil(np.log2(need)))


def welch_psd(x: np.ndarray, fs_hz: float, segment_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum along the last axis (Hann, 50 % overlap, zero-padded); returns (f_hz, power)."""
    n = x.shape[-1]
    nperseg = min(n, max(8, round(segment_s * fs_hz)))
    nfft = nfft_for(fs_hz, nperseg)
    f_hz, power = signal.welch(
        x, fs=fs_hz, window="hann", nperseg=nperseg, noverlap=nperseg // 2, nfft=nfft, detrend=False, axis=-1
    )
    return f_hz, power


def hann_power(x: np.ndarray, fs_hz: float, nfft: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed periodogram along the last axis; returns (f_hz, power)."""
    n = x.shape[-1]
    nfft = nfft or nfft_for(fs_hz, n)
    window = np.hanning(n)
    spec = np.fft.rfft((x - x.mean(axis=-1, keepdims=True)) * window, n=nfft, axis=-1)
    return np.fft.rfftfreq(nfft, 1.0 / fs_hz), np.abs(spec) ** 2


def parabolic_peak(f_hz: np.ndarray, power: np.ndarray, k: int) -> float:
    """Frequency of bin `k` refined by fitting a parabola through it and its neighbours."""
    if k <= 0 or k >= power.shape[-1] - 1:
        return float(f_hz[k])
    a, b, c = float(power[k - 1]), float(power[k]), float(power[k + 1])
    denom = a - 2.0 * b + c
    delta = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return float(f_hz[k] + np.clip(delta, -0.5, 0.5) * (f_hz[1] - f_hz[0]))


def band_peak(f_hz: np.ndarray, power: np.ndarray, low_hz: float, high_hz: float) -> tuple[int, float]:
    """Index and parabolic-refined frequency of the largest bin of `power` in [low_hz, high_hz]."""
    band = np.flatnonzero((f_hz >= low_hz) & (f_hz <= high_hz))
    k = int(band[np.argmax(power[band])])
    return k, parabolic_peak(f_hz, power, k)


def template_snr_db(
    f_hz: np.ndarray,
    power: np.ndarray,
    f0_hz: float,
    low_hz: float,
    high_hz: float,
    half_width_hz: float = 0.1,
) -> float:
    """SNR of de Haan & Jeanne (2013): power near f0 and its first harmonic over the rest of the band, in dB."""
    band = (f_hz >= low_hz) & (f_hz <= high_hz)
    near = (np.abs(f_hz - f0_hz) <= half_width_hz) | (np.abs(f_hz - 2.0 * f0_hz) <= 2.0 * half_width_hz)
    signal_power = float(power[band & near].sum())
    noise_power = float(power[band & ~near].sum())
    if signal_power <= 0:
        return -30.0
    if noise_power <= 0:
        return 30.0
    return float(np.clip(10.0 * np.log10(signal_power / noise_power), -30.0, 30.0))
