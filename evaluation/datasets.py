"""Recordings with a contact ground truth, from the layouts rPPG datasets are distributed in.

- `ubfc-rppg`: UBFC-rPPG DATASET_2 (Bobbia et al. 2017): `subjectN/vid.avi|mp4` and
  `subjectN/ground_truth.txt`, three lines with one value per video frame: PPG, oximeter HR (bpm), time
  (s). The time line is not always increasing, so the samples are aligned to the frames by index.
- `pure`: PURE (Stricker et al. 2014): `NN-NN.json` with `/FullPackage` (oximeter samples: `Timestamp` ns,
  `Value.waveform`, `Value.pulseRate`) and `/Image` (frame `Timestamp`s), and the frames as
  `NN-NN/Image<Timestamp>.png` beside the JSON file (or one directory down, as some copies have it).
- `folder`: any `NAME.<video>` beside `NAME.csv` with a `time_s` column and a `ppg` or `hr_bpm` column.

Nothing here reads pixels: a `Recording` says where the frames are and what the truth is; `open_frames`
gives its frame source.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np

from capture import FrameSource, open_source

Layout = Literal["ubfc-rppg", "pure", "folder"]
LAYOUTS: Final = ("ubfc-rppg", "pure", "folder")
VIDEO_SUFFIXES: Final = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v")


class DatasetError(ValueError):
    """A dataset folder that does not hold what its layout promises; the message names the file."""


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """Contact ground truth. `t_s` [N] is on the video's clock (0 = first frame), or None when there is
    one sample per video frame (UBFC): then the frame times are the sample times."""

    t_s: np.ndarray | None
    ppg: np.ndarray | None  # waveform, arbitrary units
    hr_bpm: np.ndarray | None  # a heart-rate series (used when there is no waveform)


@dataclass(frozen=True, slots=True, eq=False)
class Recording:
    """One video (a file, or image files with their times) and its contact reference."""

    name: str
    reference: Reference
    video: Path | None = None
    frames: tuple[Path, ...] = ()
    frame_t_s: np.ndarray | None = None


def open_frames(recording: Recording) -> FrameSource:
    """The recording's frames: the video file's replay, or the image sequence at its own timestamps."""
    if recording.video is not None:
        return open_source(recording.video)
    from capture.images import ImageSequenceSource

    assert recording.frame_t_s is not None
    return ImageSequenceSource(recording.frames, recording.frame_t_s, name=recording.name)


def detect_layout(root: Path) -> Layout:
    """Guess the layout: subject folders with ground_truth.txt, PURE JSON files, or video+CSV pairs."""
    if any(root.glob("*/ground_truth.txt")):
        return "ubfc-rppg"
    if any(_pure_json_files(root)):
        return "pure"
    return "folder"


def load(root: Path, layout: Layout | None = None) -> list[Recording]:
    """All recordings under `root`, sorted by name (natural order: subject2 before subject10)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    layout = layout or detect_layout(root)
    loaders = {"ubfc-rppg": _load_ubfc, "pure": _load_pure, "folder": _load_folder}
    if layout not in loaders:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    recordings = loaders[layout](root)
    if not recordings:
        raise DatasetError(f"{root}: no recordings found for the {layout} layout")
    return sorted(recordings, key=lambda r: _natural_key(r.name))


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _load_ubfc(root: Path) -> list[Recording]:
    recordings = []
    for truth in root.glob("*/ground_truth.txt"):
        videos = sorted(p for p in truth.parent.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise DatasetError(f"{truth.parent}: ground_truth.txt but no video (vid.avi or vid.mp4)")
        rows = [line.split() for line in truth.read_text().splitlines() if line.strip()]
        if len(rows) < 2:
            raise DatasetError(f"{truth}: expected lines PPG, HR, time; found {len(rows)} line(s)")
        try:
            ppg = np.array([float(v) for v in rows[0]])
            hr = np.array([float(v) for v in rows[1]])
        except ValueError as exc:
            raise DatasetError(f"{truth}: not numbers ({exc})") from exc
        recordings.append(Recording(truth.parent.name, Reference(None, ppg, hr), video=videos[0]))
    return recordings


def _pure_json_files(root: Path) -> list[Path]:
    pattern = re.compile(r"^\d{2}-\d{2}\.json$")
    return [p for p in (*root.glob("*.json"), *root.glob("*/*.json")) if pattern.match(p.name)]


def _load_pure(root: Path) -> list[Recording]:
    recordings = []
    for path in _pure_json_files(root):
        try:
            data = json.loads(path.read_text())
            package = data["/FullPackage"]
            images = data["/Image"]
            sample_ns = np.array([int(s["Timestamp"]) for s in package], dtype=np.int64)
            waveform = np.array([float(s["Value"]["waveform"]) for s in package])
            pulse_rate = np.array([float(s["Value"]["pulseRate"]) for s in package])
            image_ns = [int(i["Timestamp"]) for i in images]
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: not a PURE ground-truth file ({type(exc).__name__}: {exc})") from exc
        stem = path.stem
        folder = next((d for d in (path.parent / stem, path.parent / stem / stem) if d.is_dir()), None)
        if folder is None:
            raise DatasetError(f"{path}: no frame folder {stem}/ beside it")
        frames = tuple(folder / f"Image{ns}.png" for ns in image_ns)
        missing = [f for f in frames if not f.is_file()]
        if missing:
            raise DatasetError(
                f"{folder}: {len(missing)} of {len(frames)} frames missing, e.g. {missing[0].name}"
            )
        start_ns = image_ns[0]
        order = np.argsort(sample_ns, kind="stable")
        reference = Reference((sample_ns[order] - start_ns) / 1e9, waveform[order], pulse_rate[order])
        frame_t_s = (np.asarray(image_ns, dtype=np.int64) - start_ns) / 1e9
        recordings.append(Recording(stem, reference, frames=frames, frame_t_s=frame_t_s))
    return recordings


def _load_folder(root: Path) -> list[Recording]:
    recordings = []
    for video in root.iterdir():
        if video.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        table = video.with_suffix(".csv")
        if not table.is_file():
            raise DatasetError(f"{video}: no {table.name} beside it (columns time_s and ppg or hr_bpm)")
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            if "time_s" not in columns or not columns & {"ppg", "hr_bpm"}:
                raise DatasetError(f"{table}: needs a time_s column and a ppg or hr_bpm column")
            try:
                rows = [
                    {k: float(v) for k, v in row.items() if k in ("time_s", "ppg", "hr_bpm") and v != ""}
                    for row in reader
                ]
            except ValueError as exc:
                raise DatasetError(f"{table}: not numbers ({exc})") from exc
        t_s = np.array([r["time_s"] for r in rows])
        ppg = np.array([r["ppg"] for r in rows]) if "ppg" in columns else None
        hr = np.array([r["hr_bpm"] for r in rows]) if "hr_bpm" in columns else None
        recordings.append(Recording(video.stem, Reference(t_s, ppg, hr), video=video))
    return recordings
