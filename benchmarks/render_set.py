"""The realistic render set that accuracy benchmarks and the confidence calibration share.

32 videos of 40 s in the UBFC-rPPG layout (`vNN/vid.mp4|avi` + `ground_truth.txt`): two faces at webcam
H.264 (crf 23), MJPG, phone (720p, crf 20) and low bit rate (crf 28) presets with natural head motion,
light drift and irregular breathing; 20 with a pulse of 0.3-1 % at 45-150 bpm, 12 without a pulse
(`nNN`). Rendered once into a cache folder (about a minute each on one core) and reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

PRESETS: Final = (
    "webcam",
    "low-bitrate",
    "webcam-mjpeg",
    "webcam",
    "phone",
    "webcam",
    "low-bitrate",
    "webcam-mjpeg",
)
HR_BPM: Final = (47, 58, 66, 74, 83, 92, 101, 110, 119, 128, 138, 148, 52, 70, 88, 106, 124, 142, 62, 96)
FACES: Final = ("astronaut", "grace_hopper")
DURATION_S: Final = 40.0


def cases() -> list[tuple[str, str, str, float, float, float, int]]:
    """(name, preset, face, HR bpm, pulse amplitude, RR breaths/min, seed) of every video."""
    rng = np.random.default_rng(42)
    out = []
    for i, hr in enumerate(HR_BPM):
        amplitude, rr = float(rng.uniform(0.003, 0.01)), float(rng.uniform(9, 20))
        out.append((f"v{i:02d}", PRESETS[i % len(PRESETS)], FACES[i % 2], float(hr), amplitude, rr, 100 + i))
    for j in range(4):
        rr = float(rng.uniform(9, 20))
        out.append((f"n{j:02d}", ("webcam", "low-bitrate")[j % 2], FACES[j % 2], 70.0, 0.0, rr, 200 + j))
    # More videos without a pulse, of every preset: a confident reading of one is the worst failure, and
    # head motion leaves coherent, line-like artefacts in them that the confidence must learn to refuse.
    for j in range(4, 12):
        rr = float(rng.uniform(9, 20))
        out.append((f"n{j:02d}", PRESETS[j % len(PRESETS)], FACES[j % 2], 70.0, 0.0, rr, 200 + j))
    return out


def render_set(directory: Path) -> Path:
    """Render the missing videos of the set into `directory` (UBFC layout) and return it."""
    from capture.synthetic import render_preset

    for name, preset, face, hr, amplitude, rr, seed in cases():
        folder = directory / name
        video = folder / ("vid.avi" if "mjpeg" in preset else "vid.mp4")
        if (folder / "ground_truth.txt").is_file() and video.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".partial{video.suffix}"
        render_preset(
            partial, preset, duration_s=DURATION_S, face=face, hr_bpm=hr, pulse_amplitude=amplitude,
            rr_bpm=rr, seed=seed, ppg_path=folder / ".ground_truth.txt",
        )  # fmt: skip
        partial.replace(video)
        Path(f"{partial}.truth.json").replace(f"{video}.truth.json")
        (folder / ".ground_truth.txt").replace(folder / "ground_truth.txt")
        print(f"rendered {name} ({preset}, {face}, {hr:g} bpm, pulse {amplitude:.2%})", flush=True)
    return directory


def is_pulseless(name: str) -> bool:
    return name.startswith("n")
