"""The pieces of a frame the preprocessor reads, without converting the whole frame to BGR.

Per frame the pipeline needs colour only over the face box (extraction), a 72x72 patch and a resized face
crop for the landmark model (every few frames), both resized before any colour conversion, and a small
grey crop for tracking. For a `capture.yuv.YuvFrame` these
come straight from the decoder's I420 planes (`capture.yuv.I420Planes` has the same methods), which
avoids the full-frame conversion that costs as much as decoding; any other frame is wrapped in
`BgrPixels`, whose crops are views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from capture.frame import Frame


class Pixels(Protocol):
    """Read access to one frame's pixels; crops are clamped to the frame."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def to_bgr(self) -> np.ndarray: ...

    def crop_bgr(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray: ...

    def small_bgr(self, width_px: int, height_px: int, *, rgb: bool = False) -> np.ndarray: ...

    def resized_crop(
        self, x0: int, y0: int, x1: int, y1: int, width_px: int, height_px: int, *, rgb: bool = False
    ) -> np.ndarray: ...

    def grey_crop(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray: ...

    def sample_bgr(self, step_px: int) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class BgrPixels:
    """`Pixels` over an ordinary BGR image."""

    image: np.ndarray

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def to_bgr(self) -> np.ndarray:
        return self.image

    def crop_bgr(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.image[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]

    def small_bgr(self, width_px: int, height_px: int, *, rgb: bool = False) -> np.ndarray:
        small = self.image
        if (width_px, height_px) != (self.width, self.height):
            small = cv2.resize(self.image, (width_px, height_px), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_BGR2RGB) if rgb else small

    def resized_crop(
        self, x0: int, y0: int, x1: int, y1: int, width_px: int, height_px: int, *, rgb: bool = False
    ) -> np.ndarray:
        crop = self.crop_bgr(x0, y0, x1, y1)
        if crop.shape[0] < 1 or crop.shape[1] < 1:
            return np.zeros((height_px, width_px, 3), np.uint8)
        shrink = width_px <= crop.shape[1] and height_px <= crop.shape[0]
        method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        small = cv2.resize(crop, (width_px, height_px), interpolation=method)
        return cv2.cvtColor(small, cv2.COLOR_BGR2RGB) if rgb else small

    def grey_crop(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return cv2.cvtColor(self.crop_bgr(x0, y0, x1, y1), cv2.COLOR_BGR2GRAY)

    def sample_bgr(self, step_px: int) -> np.ndarray:
        return self.image[::step_px, ::step_px].reshape(-1, 3).astype(np.float32)


def pixels_of(frame: Frame) -> Pixels:
    """The frame's I420 planes when it carries them, else its BGR image."""
    planes = getattr(frame, "planes", None)
    if planes is not None:
        return planes
    return BgrPixels(frame.image)


def landmark_input_size(width: int, height: int, max_side_px: int) -> tuple[int, int]:
    """Even (width, height) of the copy the landmark model sees: the frame scaled to <= max_side_px."""
    scale = min(1.0, max_side_px / max(width, height))
    if scale >= 1.0:
        return width, height
    return max(2, round(width * scale) & ~1), max(2, round(height * scale) & ~1)
