"""Trace-level simulator: a `Measurement` with known HR, HRV and breathing, without rendering video.

Skin model (Wang et al. 2017, section II): each region's mean colour is its skin tone × the illumination
× (1 − blood-volume pulse along the PBV direction) plus white specular reflection, plus sensor noise that
grows as the region shrinks. Breathing enters three ways (baseline intensity, pulse amplitude, beat
intervals via respiratory sinus arrhythmia) and as vertical head motion; optional periodic head motion
adds a specular artefact at its own rate. Timing defects (jitter, dropped frames, face-lost gaps) are
applied last, as a camera would. The beats, pulse wave and truth statistics are capture/synthetic.py's, so
both simulators agree on HR and HRV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from capture.synthetic import beat_times, interval_stats, pulse_waveform
from contract.tensor import FACE_REGIONS, Measurement, TensorMetadata

# Blood-volume-pulse signature of skin, normalised to green (de Haan & van Leest 2014: ~[0.33, 0.77, 0.53]).
PBV = np.array([0.43, 1.0, 0.69])
SKIN_RGB = {
    "forehead": (186.0, 138.0, 118.0),
    "left_cheek": (196.0, 134.0, 116.0),
    "right_cheek": (194.0, 135.0, 117.0),
    "face": (190.0, 136.0, 117.0),
    "face_left": (191.0, 135.5, 116.5),
    "face_right": (189.0, 136.5, 117.5),
    "frame": (150.0, 120.0, 105.0),
}
# Share of the face's skin pixels each region holds; noise on a mean scales as 1/sqrt(pixels).
AREA = {
    "forehead": 0.25,
    "left_cheek": 0.15,
    "right_cheek": 0.15,
    "face": 1.0,
    "face_left": 0.5,
    "face_right": 0.5,
    "frame": 1.0,
}
FACE_PIXELS = 12000


@dataclass(frozen=True, slots=True)
class TraceTruth:
    hr_bpm: float
    rr_bpm: float
    sdnn_ms: float
    rmssd_ms: float
    beat_times_s: np.ndarray


def simulate(
    *,
    duration_s: float = 30.0,
    fps: float = 30.0,
    hr_bpm: float = 72.0,
    rr_bpm: float = 15.0,
    sdnn_ms: float = 40.0,
    pulse_amplitude: float = 0.006,
    noise_std: float = 0.05,
    with_pulse: bool = True,
    dicrotic: float = 0.45,
    dicrotic_phase: float = 0.55,
    resp_intensity: float = 0.003,
    resp_amplitude: float = 0.15,
    breathing_motion: float = 0.004,
    sway: float = 0.01,
    motion_hz: float | None = None,
    motion_amplitude: float = 0.0,
    specular: float = 0.02,
    drift: float = 0.05,
    jitter_ms: float = 0.0,
    drop_fraction: float = 0.0,
    drop_bursts_s: tuple[tuple[float, float], ...] = (),
    face_lost_s: tuple[tuple[float, float], ...] = (),
    absent_regions: tuple[str, ...] = (),
    regions: tuple[str, ...] = FACE_REGIONS,
    seed: int = 0,
) -> tuple[Measurement, TraceTruth]:
    """Simulate one measurement. Amplitudes are relative (0.006 = 0.6 % green peak-to-peak pulse);
    `noise_std` is in 0..255 units on the whole-face mean; motion amplitudes are fractions of face width.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * fps)
    t = np.arange(n) / fps
    if jitter_ms > 0:
        t = t + rng.normal(0.0, jitter_ms / 1000.0, n)
        t = np.maximum.accumulate(t)
        t = t + np.arange(n) * 1e-6  # keep strictly increasing
    beats = beat_times(duration_s, hr_bpm, rr_bpm, sdnn_ms, rng, margin_s=1.5)
    if with_pulse:
        pulse = pulse_waveform(t, beats, dicrotic=dicrotic, dicrotic_phase=dicrotic_phase)
    else:
        pulse = np.zeros(n)
    breath = np.sin(2 * math.pi * rr_bpm / 60.0 * t + rng.uniform(0, 2 * math.pi))

    # Slow sway: smoothed random walk scaled to +-sway; breathing lifts the head; optional head bob.
    walk = np.cumsum(rng.normal(0, 1, (n, 2)), axis=0)
    kernel = np.ones(int(fps)) / int(fps)
    walk = np.stack([np.convolve(walk[:, i], kernel, mode="same") for i in range(2)], axis=1)
    walk -= walk.mean(axis=0)
    walk *= sway / max(float(np.abs(walk).max()), 1e-9)
    bob = motion_amplitude * np.sin(2 * math.pi * (motion_hz or 0.0) * t) if motion_hz else np.zeros(n)
    box = np.empty((n, 4))
    box[:, 0] = 0.35 + walk[:, 0]
    box[:, 1] = 0.22 + walk[:, 1] + breathing_motion * breath + bob
    box[:, 2] = 0.30
    box[:, 3] = 0.40
    box += rng.normal(0.0, 0.0005, box.shape)  # landmark jitter (~0.3 px on a 640 px frame)

    illum = 1.0 + drift * (np.sin(2 * math.pi * t / (2.5 * duration_s)) + 0.5 * t / duration_s)
    tint = np.array([1.0, 1.0, 1.0]) + 0.3 * drift * np.outer(t / duration_s, [1.0, 0.0, -1.0])
    am = 1.0 + resp_amplitude * breath
    rgb = np.empty((n, len(regions), 3))
    skin_px = np.empty((n, len(regions)), dtype=np.int32)
    for r, name in enumerate(regions):
        base = np.array(SKIN_RGB.get(name, SKIN_RGB["face"]))
        area = AREA.get(name, 0.2)
        blood = 1.0 - pulse_amplitude * np.outer(pulse * am, PBV)
        lum = (1.0 + resp_intensity * breath) * illum
        colour = base * tint * blood * lum[:, None]
        # Head motion changes the angle to the light: white specular proportional to displacement.
        shine = specular * 255.0 * (np.abs(walk[:, 1]) / max(sway, 1e-9) * 0.2 + 25.0 * np.abs(bob))
        colour += shine[:, None] * rng.uniform(0.8, 1.2)
        colour += rng.normal(0.0, noise_std / math.sqrt(area), colour.shape)
        rgb[:, r] = colour
        skin_px[:, r] = round(FACE_PIXELS * area)
    if {"face", "face_left", "face_right"} <= set(regions):
        # The face is the union of its halves: its noise is theirs, averaged, not a third draw.
        face, left, right = (regions.index(name) for name in ("face", "face_left", "face_right"))
        rgb[:, face] = (rgb[:, left] + rgb[:, right]) / 2.0 + (
            np.array(SKIN_RGB["face"])
            - (np.array(SKIN_RGB["face_left"]) + np.array(SKIN_RGB["face_right"])) / 2.0
        )

    absent = np.zeros(n, dtype=bool)
    for start, end in face_lost_s:
        absent |= (t >= start) & (t < end)
    rgb[absent] = np.nan
    skin_px[absent] = 0
    box[absent] = np.nan
    for name in absent_regions:
        r = regions.index(name)
        rgb[:, r] = np.nan
        skin_px[:, r] = 0

    keep = np.ones(n, dtype=bool)
    if drop_fraction > 0:
        keep &= rng.random(n) >= drop_fraction
    for start, end in drop_bursts_s:
        keep &= ~((t >= start) & (t < end))
    keep[0] = keep[-1] = True

    in_window = beats[(beats >= 0) & (beats <= duration_s)]
    true_hr, true_sdnn, true_rmssd = interval_stats(in_window)
    truth = TraceTruth(
        hr_bpm=true_hr, rr_bpm=rr_bpm, sdnn_ms=true_sdnn, rmssd_ms=true_rmssd, beat_times_s=in_window
    )
    rgb = np.where(np.isnan(rgb), np.nan, np.clip(rgb, 0.0, 255.0))
    m = Measurement(
        t_s=(t[keep] + 1000.0).astype(np.float64),  # a non-zero clock, as real cameras have
        rgb=rgb[keep].astype(np.float32),
        skin_px=skin_px[keep],
        face_box=box[keep].astype(np.float32),
        patches=None,
        meta=TensorMetadata(regions=regions, frame_width=640, frame_height=480, source="video", sdk="sim"),
    )
    return m, truth
