"""The textbook rPPG pipeline every vitalcam accuracy figure is shown beside.

It is deliberately plain and independent of the product code (its own landmark handling, region, traces
and estimator), so that it measures what a researcher would get from the literature in an afternoon:

- FaceMesh (mediapipe 0.10.21, tracking mode, default confidences) on every frame;
- one region: the convex hull of the face oval minus the hulls of the eyes, eyebrows and lips
  (mediapipe's own FACEMESH_* connection sets), rasterised on every frame;
- the plain mean R, G, B of all pixels in it (no skin rule, no sub-pixel placement);
- GREEN (Verkruysse et al. 2008), CHROM (de Haan & Jeanne 2013) or POS (Wang et al. 2017) on the
  trace, band-passed 0.75-2.5 Hz (45-150 bpm, as rPPG-Toolbox evaluates);
- HR = the highest periodogram bin in that band (Hann window, zero-padded to 0.25 bpm bins).

Frames without a face repeat the previous mean (or are dropped at the start), as simple toolboxes do.
`vitalcam evaluate --baseline textbook` runs it on the same videos and windows as vitalcam.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import signal

LOW_HZ: Final = 0.75
HIGH_HZ: Final = 2.5
METHODS: Final = ("green", "chrom", "pos")
# Two of CHROM's and POS's 1.6 s windows, and two periods of the slowest pulse in the band: a shorter
# trace is refused rather than answered (np.convolve's "same" mode would return the kernel's length).
MIN_DURATION_S: Final = 3.2


@dataclass(frozen=True, slots=True)
class Traces:
    """Per-frame mean RGB (0..255) of the textbook face region, and the frame times in seconds."""

    t_s: np.ndarray  # float64 [T]
    rgb: np.ndarray  # float64 [T, 3], R, G, B
    face_found: np.ndarray  # bool [T]


def _hull_points(landmarks: np.ndarray, connections: Iterable[tuple[int, int]]) -> np.ndarray:
    index = sorted({i for edge in connections for i in edge})
    import cv2

    return cv2.convexHull(np.round(landmarks[index]).astype(np.int32))


def face_traces(frames: Iterable[tuple[float, np.ndarray]]) -> Traces:
    """Mean RGB of the face hull minus eyes, brows and lips, from (t_s, BGR image) pairs."""
    import cv2
    import mediapipe as mp

    from preprocess.face import quiet_native_logs

    fm = mp.solutions.face_mesh
    holes = (
        fm.FACEMESH_LEFT_EYE,
        fm.FACEMESH_RIGHT_EYE,
        fm.FACEMESH_LEFT_EYEBROW,
        fm.FACEMESH_RIGHT_EYEBROW,
        fm.FACEMESH_LIPS,
    )
    times: list[float] = []
    means: list[np.ndarray] = []
    found: list[bool] = []
    last: np.ndarray | None = None
    with quiet_native_logs():  # mediapipe's C++ lines as its models open, in the middle of every report
        mesh = fm.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=False)
        mesh.process(np.zeros((64, 64, 3), np.uint8))  # the models open (and log) on the first frame
    with mesh:
        for t_s, image in frames:
            height, width = image.shape[:2]
            result = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            mean = None
            if result.multi_face_landmarks:
                points = result.multi_face_landmarks[0].landmark
                landmarks = np.array([(p.x * width, p.y * height) for p in points[:468]])
                mask = np.zeros((height, width), np.uint8)
                cv2.fillConvexPoly(mask, _hull_points(landmarks, fm.FACEMESH_FACE_OVAL), (255,))
                for hole in holes:
                    cv2.fillConvexPoly(mask, _hull_points(landmarks, hole), (0,))
                if mask.any():
                    b, g, r, _ = cv2.mean(image, mask=mask)
                    mean = np.array([r, g, b])
            if mean is None:
                mean = last
            if mean is None:
                continue  # no face yet: nothing to repeat
            times.append(float(t_s))
            means.append(mean)
            found.append(mean is not last)
            last = mean
    return Traces(
        t_s=np.asarray(times, np.float64),
        rgb=np.asarray(means, np.float64).reshape(-1, 3),
        face_found=np.asarray(found, bool),
    )


def uniform(t_s: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The trace linearly resampled to its mean frame rate (real cameras are not evenly timed)."""
    n = t_s.shape[0]
    fs_hz = (n - 1) / float(t_s[-1] - t_s[0])
    grid = t_s[0] + np.arange(n) / fs_hz
    return np.stack([np.interp(grid, t_s, rgb[:, c]) for c in range(3)], axis=1), fs_hz


def _bandpass(x: np.ndarray, fs_hz: float) -> np.ndarray:
    b, a = signal.butter(3, [LOW_HZ / (fs_hz / 2), HIGH_HZ / (fs_hz / 2)], btype="bandpass")
    return signal.filtfilt(b, a, signal.detrend(x))


def green(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """GREEN: the green channel itself (Verkruysse, Svaasand & Nelson 2008)."""
    return _bandpass(rgb[:, 1], fs_hz)


def chrom(rgb: np.ndarray, fs_hz: float, window_s: float = 1.6) -> np.ndarray:
    """CHROM (de Haan & Jeanne 2013): band-passed X = 3R - 2G and Y = 1.5R + G - 1.5B of the colour
    normalised by its window mean, S = X - (σX/σY)·Y per Hann window, overlap-added at half a window."""
    n = rgb.shape[0]
    length = 2 * (round(window_s * fs_hz) // 2)
    kernel = np.ones(length) / length
    local_mean = np.stack([np.convolve(rgb[:, c], kernel, mode="same") for c in range(3)], axis=1)
    cn = rgb / local_mean
    x = _bandpass(3 * cn[:, 0] - 2 * cn[:, 1], fs_hz)
    y = _bandpass(1.5 * cn[:, 0] + cn[:, 1] - 1.5 * cn[:, 2], fs_hz)
    out = np.zeros(n)
    hann = np.hanning(length)
    for start in range(0, n - length + 1, length // 2):
        xs, ys = x[start : start + length], y[start : start + length]
        out[start : start + length] += hann * (xs - xs.std() / max(ys.std(), 1e-12) * ys)
    return _bandpass(out, fs_hz)


def pos(rgb: np.ndarray, fs_hz: float, window_s: float = 1.6) -> np.ndarray:
    """POS (Wang, den Brinker, Stuijk & de Haan 2017, Algorithm 1), overlap-added with a one-frame hop."""
    n = rgb.shape[0]
    length = round(window_s * fs_hz)
    out = np.zeros(n)
    projection = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])
    for start in range(n - length + 1):
        seg = rgb[start : start + length]
        cn = seg / seg.mean(axis=0)
        s = cn @ projection.T
        h = s[:, 0] + s[:, 0].std() / max(s[:, 1].std(), 1e-12) * s[:, 1]
        out[start : start + length] += h - h.mean()
    return _bandpass(out, fs_hz)


def periodogram_hr_bpm(pulse: np.ndarray, fs_hz: float) -> float:
    """The highest periodogram bin in 0.75-2.5 Hz, in bpm (Hann window, 0.25 bpm bins)."""
    n = pulse.shape[0]
    nfft = max(n, 1 << int(np.ceil(np.log2(fs_hz * 240.0))))
    power = np.abs(np.fft.rfft((pulse - pulse.mean()) * np.hanning(n), nfft)) ** 2
    f_hz = np.fft.rfftfreq(nfft, 1.0 / fs_hz)
    band = (f_hz >= LOW_HZ) & (f_hz <= HIGH_HZ)
    return float(f_hz[band][np.argmax(power[band])] * 60.0)


def pulse(method: str, rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """The band-passed pulse of one evenly sampled trace [N, 3] by GREEN, CHROM or POS."""
    functions = {"green": green, "chrom": chrom, "pos": pos}
    if method not in functions:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if rgb.shape[0] < MIN_DURATION_S * fs_hz:
        raise ValueError(
            f"the trace holds {rgb.shape[0]} samples ({rgb.shape[0] / fs_hz:.2f} s at {fs_hz:.1f} Hz); "
            f"{method} needs at least {MIN_DURATION_S:g} s"
        )
    return functions[method](rgb, fs_hz)


def estimate_hr_bpm(method: str, rgb: np.ndarray, fs_hz: float) -> float:
    """HR of one evenly sampled window of the textbook trace by GREEN, CHROM or POS."""
    return periodogram_hr_bpm(pulse(method, rgb, fs_hz), fs_hz)
