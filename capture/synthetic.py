"""Synthetic face videos with a known pulse, breathing and motion: the ground truth for demos and tests.

No real recordings may be downloaded here, so we render one: a real face photo shipped with scikit-image
(the astronaut) whose skin pixels are modulated by a physiological pulse (beat-to-beat intervals with
respiratory sinus arrhythmia and a known SDNN), moved by breathing and slow head sway, with sensor noise,
encoded as H.264. The truth is returned, and written beside the video as JSON, so that every stage can be
scored against it.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

# Relative pulsatile amplitude per channel (R, G, B): the blood-volume-pulse signature of skin is strongest
# in green (de Haan & van Leest 2014 report a normalised PBV vector of roughly [0.33, 0.77, 0.53]).
PULSE_RGB_WEIGHTS = np.array([0.43, 1.0, 0.69], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class SyntheticTruth:
    """What was injected into a synthetic video, in the units the vitals use."""

    hr_bpm: float
    rr_bpm: float
    sdnn_ms: float
    rmssd_ms: float
    beat_times_s: tuple[float, ...]
    fps: float
    duration_s: float
    width: int
    height: int
    pulse_amplitude: float
    has_face: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SyntheticTruth:
        data = json.loads(text)
        data["beat_times_s"] = tuple(data["beat_times_s"])
        return cls(**data)


def beat_times(
    duration_s: float,
    hr_bpm: float,
    rr_bpm: float,
    sdnn_ms: float,
    rng: np.random.Generator,
    *,
    margin_s: float = 1.0,
) -> np.ndarray:
    """Beat onsets whose intervals have respiratory sinus arrhythmia plus random variation.

    They run from `margin_s` before 0 (mid-rhythm rather than on a beat) to at least `margin_s` past
    `duration_s`.
    """
    mean_ibi_s = 60.0 / hr_bpm
    times = [0.0]
    # RSA takes about half of the variability, white beat-to-beat jitter the rest.
    rsa_s = 0.7 * sdnn_ms / 1000.0
    jitter_s = 0.7 * sdnn_ms / 1000.0
    while times[-1] < duration_s + 2 * margin_s:
        t = times[-1]
        ibi_s = mean_ibi_s + rsa_s * math.sin(2 * math.pi * rr_bpm / 60.0 * t) + rng.normal(0.0, jitter_s)
        times.append(t + max(0.3, ibi_s))
    return np.asarray(times) - margin_s


def interval_stats(beats_s: np.ndarray) -> tuple[float, float, float]:
    """HR (bpm), SDNN and RMSSD (ms) of the intervals between consecutive beats, as ground truth states them."""
    intervals_ms = np.diff(beats_s) * 1000.0
    return (
        60000.0 / float(intervals_ms.mean()),
        float(intervals_ms.std(ddof=1)),
        float(np.sqrt(np.mean(np.diff(intervals_ms) ** 2))),
    )


def pulse_waveform(
    t_s: np.ndarray, beats_s: np.ndarray, *, dicrotic: float = 0.45, dicrotic_phase: float = 0.55
) -> np.ndarray:
    """A PPG-like pulse, zero mean, peak-to-peak 1: per beat a systolic wave at 25 % of the interval plus a
    diastolic wave `dicrotic` as high at `dicrotic_phase` of it."""
    wave = np.zeros_like(t_s)
    for onset, following in itertools.pairwise(beats_s):
        ibi = following - onset
        wave += np.exp(-0.5 * ((t_s - onset - 0.25 * ibi) / (0.09 * ibi)) ** 2)
        wave += dicrotic * np.exp(-0.5 * ((t_s - onset - dicrotic_phase * ibi) / (0.12 * ibi)) ** 2)
    wave -= wave.mean()
    return wave / max(float(np.ptp(wave)), 1e-9)


def _astronaut_on_canvas(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The face photo scaled onto the canvas (BGR float32) and its soft skin mask (float32 0..1)."""
    from skimage import data

    rgb = data.astronaut()
    side = min(width, height)
    photo = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 60, np.uint8)
    x0, y0 = (width - side) // 2, (height - side) // 2
    canvas[y0 : y0 + side, x0 : x0 + side] = photo
    bgr = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    skin = cv2.inRange(ycrcb, (40, 135, 85), (250, 175, 130)).astype(np.float32) / 255.0
    # Keep skin around the face only: the astronaut's face lies in this ellipse of the photo.
    face_mask = np.zeros((height, width), np.float32)
    centre = (x0 + int(0.44 * side), y0 + int(0.23 * side))
    axes = (int(0.13 * side), int(0.19 * side))
    cv2.ellipse(face_mask, centre, axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(skin * face_mask, (5, 5), 0)
    return bgr.astype(np.float32), mask


def _skin_texture(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A frame filled with skin-coloured texture (pre-cropped skin / finger-on-lens use)."""
    base = np.empty((height, width, 3), np.float32)
    base[:] = (120.0, 150.0, 200.0)  # BGR of a mid skin tone
    texture = cv2.GaussianBlur(rng.normal(0, 8, (height, width)).astype(np.float32), (0, 0), 6)
    base += texture[..., None]
    return base, np.ones((height, width), np.float32)


def _background_only(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene without a face."""
    noise = rng.normal(110, 30, (height // 16, width // 16, 3)).astype(np.float32)
    base = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(base, 0, 255), np.zeros((height, width), np.float32)


def render_face_video(
    path: str | Path,
    *,
    duration_s: float = 30.0,
    fps: float = 30.0,
    hr_bpm: float = 72.0,
    rr_bpm: float = 15.0,
    sdnn_ms: float = 40.0,
    pulse_amplitude: float = 0.005,
    breathing_px: float = 1.5,
    sway_px: float = 2.0,
    noise_std: float = 1.0,
    brightness: float = 1.0,
    scene: str = "face",
    width: int = 640,
    height: int = 480,
    crf: int = 0,
    seed: int = 0,
) -> SyntheticTruth:
    """Render a synthetic measurement video to `path` (H.264 MP4) and return its ground truth.

    `pulse_amplitude` is the green-channel peak-to-peak modulation of skin (0.005 = 0.5 %, typical of real
    rPPG); `scene` is "face" (the astronaut), "skin" (skin texture filling the frame) or "none" (no face).
    `crf` 0 (the default) encodes losslessly: lossy H.264 quantises away most of a 0.5 % pulse (McDuff et
    al. 2017, "The impact of video compression on remote cardiac pulse measurement"), and here crf 14
    drops the pulse SNR of an ideal skin mask from 12 dB to 4 dB. Pass crf > 0 to study that loss.
    The truth is also written to `<path>.truth.json`.
    """
    import av

    path = Path(path)
    rng = np.random.default_rng(seed)
    if scene == "face":
        base, mask = _astronaut_on_canvas(width, height)
    elif scene == "skin":
        base, mask = _skin_texture(width, height, rng)
    elif scene == "none":
        base, mask = _background_only(width, height, rng)
    else:
        raise ValueError(f"scene must be 'face', 'skin' or 'none', got {scene!r}")
    base *= brightness

    n_frames = round(duration_s * fps)
    t_s = np.arange(n_frames) / fps
    beats = beat_times(duration_s, hr_bpm, rr_bpm, sdnn_ms, rng)
    pulse = pulse_waveform(t_s, beats)
    breathing = np.sin(2 * math.pi * rr_bpm / 60.0 * t_s)
    # Slow head sway: smoothed random walk, bounded to about +-sway_px.
    sway = np.cumsum(rng.normal(0, 1, (n_frames, 2)), axis=0)
    sway = cv2.GaussianBlur(sway.astype(np.float32), (1, 0), sigmaX=0, sigmaY=fps).reshape(n_frames, 2)
    sway -= sway.mean(axis=0)
    sway *= sway_px / max(float(np.abs(sway).max()), 1e-9)

    in_window = beats[(beats >= 0) & (beats <= duration_s)]
    true_hr, true_sdnn, true_rmssd = interval_stats(in_window)
    truth = SyntheticTruth(
        hr_bpm=true_hr,
        rr_bpm=rr_bpm,
        sdnn_ms=true_sdnn,
        rmssd_ms=true_rmssd,
        beat_times_s=tuple(float(b) for b in in_window),
        fps=fps,
        duration_s=n_frames / fps,
        width=width,
        height=height,
        pulse_amplitude=pulse_amplitude if scene != "none" else 0.0,
        has_face=scene == "face",
    )

    gains = mask[..., None] * (pulse_amplitude * PULSE_RGB_WEIGHTS[::-1])  # BGR order
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(n_frames):
            lit = base * (1.0 + gains * pulse[i])
            shift = np.float32([[1, 0, sway[i, 0]], [0, 1, sway[i, 1] + breathing_px * breathing[i]]])
            moved = cv2.warpAffine(lit, shift, (width, height), borderMode=cv2.BORDER_REFLECT)
            moved += rng.normal(0.0, noise_std, moved.shape).astype(np.float32)
            image = np.clip(moved, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    Path(f"{path}.truth.json").write_text(truth.to_json())
    return truth
