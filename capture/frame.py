"""The unit of data every frame source yields and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SourceKind = Literal["camera", "video", "stream"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame with its true capture time.

    `t_s` is seconds since the first frame of the source (capture or presentation time, never index/fps):
    rPPG reads the pulse from timing, so a mistimed frame distorts it.
    """

    image: np.ndarray  # H x W x 3 uint8, BGR (OpenCV order)
    t_s: float
    index: int
