"""Replay of a recording stored as numbered image files (PURE and other lossless research datasets).

Lossless datasets keep each frame as a PNG, with capture times beside them (PURE names each file by its
timestamp and lists them in a JSON file), so timing comes from the caller, not from a frame rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import cv2
import numpy as np

from capture.errors import VideoFileError
from capture.frame import Frame
from capture.source import SourceInfo


class ImageSequenceSource:
    """Frames read from image files, one per entry of `t_s` (seconds; shifted so the first is 0)."""

    def __init__(self, paths: Sequence[Path], t_s: Sequence[float] | np.ndarray, *, name: str = "") -> None:
        times = np.asarray(t_s, dtype=np.float64)
        if len(paths) == 0:
            raise VideoFileError(name or "image sequence", "no frames")
        if times.shape != (len(paths),):
            raise VideoFileError(name or "image sequence", f"{len(paths)} images but {times.size} timestamps")
        self._paths = list(paths)
        self._t_s = times - times[0]
        first = self._read(0)
        height, width = first.shape[:2]
        duration = float(self._t_s[-1]) if times.size > 1 else 0.0
        fps = (times.size - 1) / duration if duration > 0 else 0.0
        self._info = SourceInfo(
            width=width,
            height=height,
            fps=fps,
            kind="video",
            name=name or str(self._paths[0].parent),
            duration_s=duration,
            frame_count=len(self._paths),
        )

    def _read(self, index: int) -> np.ndarray:
        image = cv2.imread(str(self._paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoFileError(str(self._paths[index]), "not a readable image")
        return image

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def dropped(self) -> int:
        return 0

    def __iter__(self) -> Iterator[Frame]:
        for index, t_s in enumerate(self._t_s):
            yield Frame(self._read(index), float(t_s), index)

    def close(self) -> None:
        """Nothing is held open between frames."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
