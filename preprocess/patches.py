"""72x72 face patches for the server's appearance models (the tensor's optional `patches`)."""

from __future__ import annotations

import cv2
import numpy as np

from contract.tensor import PATCH_SIZE_PX
from preprocess.pixels import Pixels


def patch_box(
    box_px: tuple[float, float, float, float], frame_width: int, frame_height: int, scale: float
) -> tuple[int, int, int]:
    """(x, y, side) of the square crop: the face box made square, enlarged by `scale`, kept in the frame.

    The side is snapped to a multiple of 72 px, which makes INTER_AREA an exact block average and several
    times faster, and keeps the crop from changing size with every pixel of landmark jitter.
    """
    x, y, w, h = box_px
    side = max(w, h) * scale
    limit = min(frame_width, frame_height)
    multiple = max(1, round(side / PATCH_SIZE_PX))
    side_px = min(multiple * PATCH_SIZE_PX, limit)
    if side_px >= PATCH_SIZE_PX:
        side_px -= side_px % PATCH_SIZE_PX
    cx, cy = x + w / 2, y + h / 2
    x0 = round(cx - side_px / 2)
    y0 = round(cy - side_px / 2)
    # Even corners: an I420 crop is grown to even bounds, and a grown crop is no longer a whole multiple
    # of 72 px, which costs its resize 4-8 times as much (`capture.yuv.shrink`).
    x0 = min(max(0, x0), frame_width - side_px) & ~1
    y0 = min(max(0, y0), frame_height - side_px) & ~1
    return x0, y0, side_px


def patch_of(pixels: Pixels, x0: int, y0: int, side_px: int) -> np.ndarray:
    """The square crop at 72x72 RGB, resized before the colour conversion (from I420: one 72x72 conversion
    instead of a full-size one). The patch feeds appearance models, never the colour traces."""
    return pixels.resized_crop(x0, y0, x0 + side_px, y0 + side_px, PATCH_SIZE_PX, PATCH_SIZE_PX, rgb=True)


def crop_patch(image_bgr: np.ndarray, x0: int, y0: int, side_px: int) -> np.ndarray:
    """The square crop resized to 72x72 with INTER_AREA (averaging, so no aliasing), as RGB uint8."""
    crop = image_bgr[y0 : y0 + side_px, x0 : x0 + side_px]
    return to_patch(crop)


def full_frame_patch(image_bgr: np.ndarray) -> np.ndarray:
    """The whole frame resized to 72x72 RGB (full-frame mode; aspect ratio is not kept)."""
    return to_patch(image_bgr)


def to_patch(crop_bgr: np.ndarray) -> np.ndarray:
    """A BGR crop resized to 72x72 with INTER_AREA, as RGB uint8."""
    small = cv2.resize(crop_bgr, (PATCH_SIZE_PX, PATCH_SIZE_PX), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
