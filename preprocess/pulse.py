"""A small POS pulse estimate for the live preview (display only; the server does the real inference).

POS (Wang et al. 2017, "Algorithmic principles of remote PPG") projects temporally normalised RGB onto
the plane orthogonal to skin tone, which cancels most illumination and motion changes; it needs nothing
but numpy and is cheap enough to refresh a few times per second.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MIN_PULSE_BPM = 42.0
MAX_PULSE_BPM = 180.0
_POS_PROJECTION = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])


def resample_uniform(t_s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float]:
    """Values interpolated onto an even time grid with the same sample count, and its rate in Hz.

    Frames from a real camera are not evenly spaced; POS and the FFT assume they are.
    """
    n = t_s.shape[0]
    fps = (n - 1) / float(t_s[-1] - t_s[0])
    grid = np.linspace(t_s[0], t_s[-1], n)
    out = np.empty_like(values, dtype=np.float64)
    for c in range(values.shape[1]):
        out[:, c] = np.interp(grid, t_s, values[:, c])
    return out, fps


def pos_pulse(rgb: np.ndarray, fps: float, window_s: float = 1.6) -> np.ndarray:
    """POS pulse signal (float64 [T]) from evenly sampled mean skin RGB [T, 3]."""
    n = rgb.shape[0]
    window = max(2, round(window_s * fps))
    if n < window:
        return np.zeros(n)
    windows = sliding_window_view(rgb, window, axis=0)  # [n - window + 1, 3, window]
    normalised = windows / np.maximum(windows.mean(axis=2, keepdims=True), 1e-9)
    projected = np.einsum("pc,ncw->npw", _POS_PROJECTION, normalised)
    s0, s1 = projected[:, 0], projected[:, 1]
    alpha = s0.std(axis=1) / np.maximum(s1.std(axis=1), 1e-12)
    h = s0 + alpha[:, None] * s1
    h -= h.mean(axis=1, keepdims=True)
    pulse = np.zeros(n)
    for start in range(h.shape[0]):  # overlap-add
        pulse[start : start + window] += h[start]
    return pulse


def bandpass(signal: np.ndarray, fps: float, low_hz: float, high_hz: float) -> np.ndarray:
    """Zero-phase FFT band-pass: plenty for a display trace and free of scipy."""
    spectrum = np.fft.rfft(signal - signal.mean())
    freqs = np.fft.rfftfreq(signal.shape[0], 1.0 / fps)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, signal.shape[0])


def dominant_bpm(signal: np.ndarray, fps: float) -> float:
    """Frequency of the strongest spectral peak in the pulse band, in beats per minute."""
    n_fft = max(4096, 1 << int(np.ceil(np.log2(signal.shape[0]))))
    power = np.abs(np.fft.rfft((signal - signal.mean()) * np.hanning(signal.shape[0]), n_fft)) ** 2
    freqs_bpm = np.fft.rfftfreq(n_fft, 1.0 / fps) * 60.0
    band = (freqs_bpm >= MIN_PULSE_BPM) & (freqs_bpm <= MAX_PULSE_BPM)
    return float(freqs_bpm[band][np.argmax(power[band])])


def preview(t_s: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(normalised pulse trace float32, bpm) from timestamps and mean RGB of present frames, or None."""
    if t_s.shape[0] < 30 or t_s[-1] - t_s[0] < 5.0:
        return None
    even, fps = resample_uniform(t_s, rgb)
    pulse = bandpass(pos_pulse(even, fps), fps, MIN_PULSE_BPM / 60.0, MAX_PULSE_BPM / 60.0)
    scale = float(np.abs(pulse).max())
    if not np.isfinite(scale) or scale == 0:
        return None
    return (pulse / scale).astype(np.float32), dominant_bpm(pulse, fps)
