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
from collections.abc import Callable
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


@dataclass(frozen=True, slots=True)
class FacePhoto:
    """A face photo shipped inside an installed package, and where its face is (fractions of the photo).

    The ellipse bounds the skin that gets the pulse (the photo's skin-coloured background must not
    pulse); it was measured once from FaceMesh's face oval on each photo.
    """

    package: str
    relative_path: str
    centre: tuple[float, float]
    axes: tuple[float, float]


FACES: dict[str, FacePhoto] = {
    # scikit-image's data.astronaut(): Eileen Collins, NASA portrait (public domain).
    "astronaut": FacePhoto("skimage", "data/astronaut.png", (0.44, 0.23), (0.13, 0.19)),
    # matplotlib's sample_data/grace_hopper.jpg: Grace Hopper, US Navy portrait (public domain).
    "grace_hopper": FacePhoto(
        "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", (0.515, 0.385), (0.17, 0.21)
    ),
}


def _face_photo_bgr(face: str) -> np.ndarray:
    import importlib.util

    if face not in FACES:
        raise ValueError(f"face must be one of {', '.join(FACES)}, got {face!r}")
    photo = FACES[face]
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the face photo {face!r} needs the package {photo.package!r}")
    path = Path(next(iter(spec.submodule_search_locations))) / photo.relative_path
    from PIL import Image  # Pillow comes with matplotlib; cv2.imread prints libpng warnings on stderr

    with Image.open(path) as image:
        return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def _face_on_canvas(
    width: int, height: int, face: str = "astronaut", photo_px: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The face photo scaled onto the canvas (BGR float32) and its soft skin mask (float32 0..1).

    The photo fills the canvas's height (or width), or is `photo_px` on its larger side: the astronaut
    at 512 px in a 1280x720 frame has a 110 px face, a person about 2 m from a webcam.
    """
    photo_bgr = _face_photo_bgr(face)
    ph, pw = photo_bgr.shape[:2]
    scale = (
        min(width / pw, height / ph)
        if photo_px is None
        else min(photo_px / max(pw, ph), width / pw, height / ph)
    )
    sw, sh = round(pw * scale), round(ph * scale)
    photo = cv2.resize(photo_bgr, (sw, sh), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 60, np.uint8)
    x0, y0 = (width - sw) // 2, (height - sh) // 2
    canvas[y0 : y0 + sh, x0 : x0 + sw] = photo
    ycrcb = cv2.cvtColor(canvas, cv2.COLOR_BGR2YCrCb)
    skin = cv2.inRange(ycrcb, np.array([40, 135, 85]), np.array([250, 175, 130])).astype(np.float32) / 255.0
    where = FACES[face]
    face_mask = np.zeros((height, width), np.float32)
    centre = (x0 + int(where.centre[0] * sw), y0 + int(where.centre[1] * sh))
    axes = (int(where.axes[0] * sw), int(where.axes[1] * sh))
    cv2.ellipse(face_mask, centre, axes, 0, 0, 360, (1.0,), -1)
    mask = cv2.GaussianBlur(skin * face_mask, (5, 5), 0)
    return canvas.astype(np.float32), mask


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


MOTIONS = ("sway", "natural")
CODECS = ("h264", "mjpeg")


def _natural_motion(n_frames: int, fps: float, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Per-frame (rotation deg, scale - 1, dx px, dy px) of a seated person who is not trying to keep still.

    A slow drift of the head (about 0.1 Hz, up to `amount` degrees of roll and percent of scale) plus a
    few quick shifts of posture (0.4 s moves of 2-6 px that stay), as people playing, reading or talking
    in front of a webcam do. Real motion keeps a video encoder re-coding the face's blocks, which is also
    why real H.264 keeps more of the pulse than a still photo: it must be in a realistic render.
    """
    walk = np.cumsum(rng.normal(0.0, 1.0, (n_frames, 4)), axis=0).astype(np.float32)
    walk = cv2.GaussianBlur(walk, (1, 0), sigmaX=0, sigmaY=1.5 * fps).reshape(n_frames, 4)
    walk -= walk.mean(axis=0)
    walk /= np.maximum(np.abs(walk).max(axis=0), 1e-9)
    motion = walk * np.array([amount, amount / 100.0, 2.0 * amount, 2.0 * amount], np.float32)
    duration_s = n_frames / fps
    ramp = max(2, round(0.4 * fps))
    for start_s in rng.uniform(2.0, max(2.5, duration_s - 2.0), size=max(1, round(duration_s / 12.0))):
        start = int(start_s * fps)
        step = rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0], size=2) * np.array([1.0, 0.5])
        profile = np.clip((np.arange(n_frames) - start) / ramp, 0.0, 1.0)
        motion[:, 2:] += profile[:, None] * step.astype(np.float32)
    return motion


def _irregular_breathing(t_s: np.ndarray, rr_bpm: float, rng: np.random.Generator) -> np.ndarray:
    """Breathing as people do it: the rate wanders by about 15 % and each breath differs in depth.

    A perfectly regular breath moves the head with exact harmonics of its rate, a line at 4 x 15 = 60 bpm
    that no real recording has and that a pulse tracker would rightly take for a pulse.
    """
    n = t_s.shape[0]
    fps = (n - 1) / max(float(t_s[-1] - t_s[0]), 1e-9)
    wander = cv2.GaussianBlur(
        rng.normal(0.0, 1.0, (n, 2)).astype(np.float32), (1, 0), sigmaX=0, sigmaY=4.0 * fps
    )
    wander = wander / np.maximum(np.abs(wander).max(axis=0), 1e-9)
    rate_hz = rr_bpm / 60.0 * (1.0 + 0.15 * wander[:, 0])
    phase = 2 * math.pi * np.cumsum(rate_hz) / fps
    return np.sin(phase) * (1.0 + 0.3 * wander[:, 1])


def _light_gain(n_frames: int, fps: float, drift: float, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame illumination gain: a slow drift of +-`drift` (clouds, auto-exposure) and `steps` lamp
    switches of 5-10 % (each a 0.2 s ramp), around 1."""
    gain = np.ones(n_frames, np.float32)
    if drift > 0:
        walk = np.cumsum(rng.normal(0.0, 1.0, n_frames)).astype(np.float32)
        walk = cv2.GaussianBlur(walk.reshape(-1, 1), (1, 0), sigmaX=0, sigmaY=3.0 * fps).ravel()
        walk -= walk.mean()
        gain += drift * walk / max(float(np.abs(walk).max()), 1e-9)
    ramp = max(2, round(0.2 * fps))
    for start_s in rng.uniform(3.0, max(3.5, n_frames / fps - 3.0), size=steps):
        profile = np.clip((np.arange(n_frames) - int(start_s * fps)) / ramp, 0.0, 1.0)
        gain *= 1.0 + rng.uniform(0.05, 0.10) * rng.choice([-1.0, 1.0]) * profile
    return gain


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
    noise_grain_px: float = 0.0,
    brightness: float = 1.0,
    scene: str = "face",
    face: str = "astronaut",
    photo_px: int | None = None,
    motion: str = "sway",
    motion_amount: float = 1.0,
    light_drift: float = 0.0,
    light_steps: int = 0,
    width: int = 640,
    height: int = 480,
    codec: str = "h264",
    crf: int = 0,
    mjpeg_quality: int = 6,
    seed: int = 0,
    ppg_path: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticTruth:
    """Render a synthetic measurement video to `path` and return its ground truth.

    `pulse_amplitude` is the green-channel peak-to-peak modulation of skin (0.005 = 0.5 %, typical of real
    rPPG); `scene` is "face" (the photo `face`, one of FACES, `photo_px` on its larger side or filling
    the frame), "skin" (skin texture filling the frame) or
    "none" (no face). `motion` "sway" is a slow sub-pixel sway of `sway_px`; "natural" adds head roll,
    scale and posture shifts scaled by `motion_amount` (see `_natural_motion`). `light_drift` (relative)
    and `light_steps` change the illumination. `codec` "h264" (MP4) uses `crf`: 0 (the default) encodes
    losslessly, 18-28 is what webcams, phones and datasets store (lossy H.264 quantises away much of a
    0.5 % pulse: McDuff et al. 2017, "The impact of video compression on remote cardiac pulse
    measurement"); "mjpeg" (AVI) uses `mjpeg_quality` (the JPEG quantiser, 2 best .. 31 worst), as USB
    webcams deliver it. The truth is also written to `<path>.truth.json`; with `ppg_path`, the injected
    pulse is written there in UBFC-rPPG's ground_truth.txt layout (`write_ubfc_ground_truth`).
    `progress(frames_done, frames_total)` is called after every frame (a render takes tens of seconds).
    """
    import av

    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    if scene == "face":
        base, mask = _face_on_canvas(width, height, face, photo_px)
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
    # Further randomness draws from its own stream, so the classic renders stay bit-identical.
    extra_rng = np.random.default_rng([seed, 1])
    pose = (
        _natural_motion(n_frames, fps, motion_amount, extra_rng)
        if motion == "natural"
        else np.zeros((n_frames, 4), np.float32)
    )
    light = _light_gain(n_frames, fps, light_drift, light_steps, extra_rng)
    if motion == "natural":
        breathing = _irregular_breathing(t_s, rr_bpm, extra_rng)

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
    centre = (width / 2.0, height / 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        if codec == "h264":
            stream = container.add_stream("libx264", rate=round(fps))
            stream.pix_fmt = "yuv420p"
            # x264's own default preset for lossy encodes, as ffmpeg uses it to re-encode datasets (UBFC's
            # public copy among them); "veryfast" quantises a 2 Hz pulse about 4 dB harder at crf 23.
            # Lossless output is the same either way, and veryfast encodes it twice as fast.
            stream.options = {"crf": str(crf), "preset": "veryfast" if crf == 0 else "medium"}
        else:
            stream = container.add_stream("mjpeg", rate=round(fps))
            stream.pix_fmt = "yuvj420p"
            stream.codec_context.qmin = stream.codec_context.qmax = mjpeg_quality
        stream.width, stream.height = width, height
        for i in range(n_frames):
            lit = base * (1.0 + gains * pulse[i])
            if light[i] != 1.0:
                lit *= light[i]
            roll_deg, scale, dx, dy = (float(v) for v in pose[i])
            warp = cv2.getRotationMatrix2D(centre, roll_deg, 1.0 + scale)
            warp[0, 2] += sway[i, 0] + dx
            warp[1, 2] += sway[i, 1] + breathing_px * breathing[i] + dy
            moved = cv2.warpAffine(
                lit, warp.astype(np.float32), (width, height), borderMode=cv2.BORDER_REFLECT
            )
            noise = rng.normal(0.0, noise_std, moved.shape).astype(np.float32)
            if noise_grain_px > 0:
                # A camera's noise is not per pixel: demosaicing and in-camera denoising give it grain.
                noise = cv2.GaussianBlur(noise, (0, 0), noise_grain_px) * (
                    2.0 * math.sqrt(math.pi) * noise_grain_px
                )
            moved = np.add(moved, noise, out=moved)
            image = np.clip(moved, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if progress is not None:
                progress(i + 1, n_frames)
        for packet in stream.encode():
            container.mux(packet)
    Path(f"{path}.truth.json").write_text(truth.to_json())
    if ppg_path is not None:
        # A video without a pulse has no reference: a flat PPG and zero HR, which evaluation leaves out.
        has_pulse = scene != "none" and pulse_amplitude > 0
        write_ubfc_ground_truth(ppg_path, t_s, pulse if has_pulse else np.zeros_like(pulse), beats, has_pulse)
    return truth


def write_ubfc_ground_truth(
    path: str | Path, t_s: np.ndarray, ppg: np.ndarray, beats_s: np.ndarray, has_pulse: bool = True
) -> None:
    """UBFC-rPPG's ground_truth.txt: three lines of one value per frame, PPG, HR (bpm), time (s).

    The HR line is the instantaneous rate of the beat interval each frame falls in, as an oximeter shows
    (0 without a pulse).
    """
    index = np.clip(np.searchsorted(beats_s, t_s, side="right") - 1, 0, beats_s.shape[0] - 2)
    hr_bpm = 60.0 / (beats_s[index + 1] - beats_s[index]) if has_pulse else np.zeros_like(t_s)
    lines = [" ".join(f"{v:.7e}" for v in row) for row in (ppg, hr_bpm, t_s)]
    Path(path).write_text("\n".join(lines) + "\n")


# Recording conditions the tests, the demo and the benchmarks share. "lossless" is the classic render;
# the others are what ordinary webcams, phones and datasets store. Keyword arguments of render_face_video.
PRESETS: dict[str, dict[str, object]] = {
    "lossless": {},
    "webcam": {"crf": 23, "noise_std": 2.0, "motion": "natural", "light_drift": 0.03},
    "webcam-mjpeg": {
        "codec": "mjpeg",
        "mjpeg_quality": 8,
        "noise_std": 2.0,
        "motion": "natural",
        "light_drift": 0.03,
    },
    "phone": {
        "crf": 20,
        "width": 1280,
        "height": 720,
        "noise_std": 1.5,
        "motion": "natural",
        "light_drift": 0.02,
    },
    "low-bitrate": {"crf": 28, "noise_std": 2.0, "motion": "natural", "light_drift": 0.03, "light_steps": 1},
    # A person about 2 m from a 720p webcam: a 110 px face.
    "far": {"crf": 23, "noise_std": 2.0, "motion": "natural", "width": 1280, "height": 720, "photo_px": 512},
}

# The benchmark inputs (benchmarks/bench_preprocess.py, bench_peers.py): a webcam stream as it is stored,
# sensor noise sigma 2 per frame, natural head motion, light drift, H.264 crf 23, 30 s at 30 fps.
BENCH_SIZES: dict[str, tuple[int, int]] = {"480p": (640, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


def render_bench_video(path: str | Path, size: str, duration_s: float = 30.0) -> SyntheticTruth:
    """The "webcam" preset at one of BENCH_SIZES: what the speed figures in the README are measured on.

    Rendered under a temporary name and renamed when complete, so that an interrupted render never
    leaves a short file behind for a benchmark's cache to reuse.
    """
    width, height = BENCH_SIZES[size]
    path = Path(path)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    truth = render_preset(partial, "webcam", width=width, height=height, duration_s=duration_s)
    Path(f"{partial}.truth.json").replace(f"{path}.truth.json")
    partial.replace(path)
    return truth


def render_preset(path: str | Path, preset: str, **overrides: object) -> SyntheticTruth:
    """`render_face_video` with one of PRESETS, and any argument overridden (hr_bpm, face, seed, ...)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return render_face_video(path, **{**PRESETS[preset], **overrides})  # type: ignore[arg-type]
