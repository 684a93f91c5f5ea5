"""Image sequences as a frame source (PURE stores its frames as PNG): timing, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from capture import VideoFileError
from capture.images import ImageSequenceSource


def write_frames(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), np.full((24, 32, 3), 10 * i, np.uint8))
        paths.append(path)
    return paths


def test_frames_come_in_order_with_their_own_timestamps(tmp_path: Path) -> None:
    paths = write_frames(tmp_path, 4)
    source = ImageSequenceSource(paths, [5.0, 5.04, 5.1, 5.13], name="seq")
    frames = list(source)
    assert [f.t_s for f in frames] == pytest.approx([0.0, 0.04, 0.1, 0.13])
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 10, 20, 30]
    assert (source.info.width, source.info.height) == (32, 24)


def test_mismatched_timestamps_and_unreadable_images_are_named(tmp_path: Path) -> None:
    paths = write_frames(tmp_path, 3)
    with pytest.raises(VideoFileError, match="3 images but 2 timestamps"):
        ImageSequenceSource(paths, [0.0, 0.1], name="seq")
    with pytest.raises(VideoFileError, match="no frames"):
        ImageSequenceSource([], [], name="seq")
    paths[1].write_bytes(b"not a png")
    source = ImageSequenceSource(paths, [0.0, 0.1, 0.2], name="seq")
    with pytest.raises(VideoFileError, match=r"001\.png: not a readable image"):
        list(source)
