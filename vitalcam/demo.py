"""`vitalcam demo`: a full measurement on a rendered face video, printed beside the truth it was made from.

It needs no camera and no network: the video is rendered once from a face photo shipped with
scikit-image and cached, then replayed through the same pipeline and embedded backend as a live run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from capture.synthetic import SyntheticTruth, render_face_video

DEMO_VIDEO_NAME = "astronaut-v2-lossless.mp4"
# The demo's truth (a 30 s lossless render; seed 7 fixes the beats and breaths).
DEMO_DURATION_S = 30.0
DEMO_HR_BPM = 74.0
DEMO_RR_BPM = 14.0
DEMO_SDNN_MS = 45.0
DEMO_SEED = 7


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitalcam" / "demo"


def demo_video(
    directory: Path | None = None, progress: Callable[[int, int], None] | None = None
) -> tuple[Path, SyntheticTruth, bool]:
    """The cached demo video and its truth, rendering it first if needed (returns whether it was rendered).

    `progress(frames_done, frames_total)` follows a render, which takes about half a minute.
    """
    directory = directory or cache_dir()
    path = directory / DEMO_VIDEO_NAME
    truth_path = Path(f"{path}.truth.json")
    if path.exists() and truth_path.exists():
        return path, SyntheticTruth.from_json(truth_path.read_text()), False
    tmp = directory / f".{DEMO_VIDEO_NAME}.partial.mp4"
    truth = render_face_video(
        tmp,
        duration_s=DEMO_DURATION_S,
        hr_bpm=DEMO_HR_BPM,
        rr_bpm=DEMO_RR_BPM,
        sdnn_ms=DEMO_SDNN_MS,
        seed=DEMO_SEED,
        progress=progress,
    )
    Path(f"{tmp}.truth.json").replace(truth_path)
    tmp.replace(path)
    return path, truth, True
