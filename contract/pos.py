"""POS, the pulse projection both the live preview and the reference engine use (one copy, numpy only).

POS (Wang, den Brinker, Stuijk, de Haan, "Algorithmic principles of remote PPG", IEEE TBME 64(7), 2017)
projects temporally normalised RGB onto the plane orthogonal to skin tone, which cancels most
illumination and motion changes. The preview's bpm and the server's must come from the same projection
and the same pulse band, or a user watching the preview is shown a number the result then contradicts.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PULSE_LOW_HZ: Final = 0.7  # 42 bpm
PULSE_HIGH_HZ: Final = 3.5  # 210 bpm
PROJECTION_WINDOW_S: Final = 1.6


def pos(rgb: np.ndarray, fs_hz: float, window_s: float = PROJECTION_WINDOW_S) -> np.ndarray:
    """Plane-Orthogonal-to-Skin pulse [N] from one evenly sampled RGB trace [N, 3] (any scale).

    Per sliding window of `window_s` (one sample hop): temporal normalisation by the window mean,
    projection onto P = [[0, 1, -1], [-2, 1, 1]], alpha tuning h = S1 + σ(S1)/σ(S2)·S2, and overlap-add of
    the zero-mean window results (Wang et al. 2017, Algorithm 1). All zeros when the trace is shorter
    than one window.
    """
    n = rgb.shape[0]
    length = max(2, round(window_s * fs_hz))
    if n < length:
        return np.zeros(n)
    windows = sliding_window_view(rgb, length, axis=0)  # [W, 3, L]
    mean = windows.mean(axis=2, keepdims=True)
    cn = windows / np.where(mean > 0, mean, 1.0)
    s1 = cn[:, 1, :] - cn[:, 2, :]
    s2 = -2.0 * cn[:, 0, :] + cn[:, 1, :] + cn[:, 2, :]
    sd1, sd2 = s1.std(axis=1), s2.std(axis=1)
    alpha = np.where(sd2 > 0, sd1 / np.where(sd2 > 0, sd2, 1.0), 0.0)
    h = s1 + alpha[:, None] * s2
    h -= h.mean(axis=1, keepdims=True)
    out = np.zeros(n)
    n_windows = h.shape[0]
    for k in range(length):
        out[k : k + n_windows] += h[:, k]
    return out
