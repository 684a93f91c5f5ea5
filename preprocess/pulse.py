"""A small POS pulse estimate for the live preview (display only; the server does the real inference).

It uses the engine's own POS (`contract.pos`) and pulse band; only the read-out is simpler (one
periodogram peak over the last seconds), cheap enough to refresh a few times per second.
"""

from __future__ import annotations

import numpy as np

from contract.pos import PULSE_HIGH_HZ, PULSE_LOW_HZ, pos

# The engine's pulse band, so the preview never shows a rate the result could not report.
MIN_PULSE_BPM = PULSE_LOW_HZ * 60.0
MAX_PULSE_BPM = PULSE_HIGH_HZ * 60.0


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
    pulse = bandpass(pos(even, fps), fps, MIN_PULSE_BPM / 60.0, MAX_PULSE_BPM / 60.0)
    scale = float(np.abs(pulse).max())
    if not np.isfinite(scale) or scale == 0:
        return None
    return (pulse / scale).astype(np.float32), dominant_bpm(pulse, fps)
