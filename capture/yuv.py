"""Frames that keep the decoder's I420 planes and convert to BGR only what is asked for.

A full-frame I420 -> BGR conversion costs about as much as decoding at 720p/1080p, yet the preprocessor
only reads a face-sized crop in colour, a <= 640 px copy for the landmark model and a grey crop for
tracking (which is the Y plane itself). `YuvFrame` is a `Frame` whose `image` is computed on first use,
so every existing caller still gets BGR, while `preprocess` asks for just the pieces it needs.

Crops are converted with the same OpenCV call as the whole frame (OpenCV's I420 conversion uses each
chroma sample for its 2x2 luma block, no interpolation), on a crop grown to even bounds, so a crop's
pixels are bit-identical to the same crop of `image`; the tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from capture.frame import Frame


@dataclass(frozen=True, slots=True)
class I420Planes:
    """Y (H x W) and U, V (H/2 x W/2) uint8 planes, possibly strided views into the decoder's buffers.

    H and W are even. Colours are BT.601 limited range (what OpenCV's I420 conversion assumes; the
    decoder only hands these out for frames tagged that way or untagged).
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])

    def to_bgr(self) -> np.ndarray:
        """The whole frame as BGR uint8 (one packing copy, then OpenCV's SIMD conversion)."""
        return _convert(self.y, self.u, self.v, cv2.COLOR_YUV2BGR_I420)

    def crop_bgr(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """BGR of the frame rectangle [x0, x1) x [y0, y1) (clamped to the frame), equal to image[y0:y1, x0:x1]."""
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(self.width, x1), min(self.height, y1)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        ex0, ey0 = x0 & ~1, y0 & ~1
        ex1, ey1 = x1 + (x1 & 1), y1 + (y1 & 1)
        bgr = _convert(
            self.y[ey0:ey1, ex0:ex1],
            self.u[ey0 // 2 : ey1 // 2, ex0 // 2 : ex1 // 2],
            self.v[ey0 // 2 : ey1 // 2, ex0 // 2 : ex1 // 2],
            cv2.COLOR_YUV2BGR_I420,
        )
        return bgr[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]

    def small_bgr(self, width_px: int, height_px: int, *, rgb: bool = False) -> np.ndarray:
        """The frame area-averaged to (about) width_px x height_px, in BGR (or RGB), converting only the
        small copy.

        Planes are resized before the colour conversion (averaging Y, U and V separately is exact for the
        affine part of the conversion), so this is for the landmark model, not for colour measurement.
        Sizes are rounded to even numbers, as I420 needs.
        """
        width_px, height_px = max(2, width_px & ~1), max(2, height_px & ~1)
        code = cv2.COLOR_YUV2RGB_I420 if rgb else cv2.COLOR_YUV2BGR_I420
        if (width_px, height_px) == (self.width, self.height):
            return _convert(self.y, self.u, self.v, code)
        area = cv2.INTER_AREA
        y = cv2.resize(self.y, (width_px, height_px), interpolation=area)
        u = cv2.resize(self.u, (width_px // 2, height_px // 2), interpolation=area)
        v = cv2.resize(self.v, (width_px // 2, height_px // 2), interpolation=area)
        return _convert(y, u, v, code)

    def resized_crop(
        self, x0: int, y0: int, x1: int, y1: int, width_px: int, height_px: int, *, rgb: bool = False
    ) -> np.ndarray:
        """The rectangle (clamped to the frame, grown to even bounds) resized to about width_px x height_px,
        in BGR (or RGB), converting only the resized copy.

        For the 72x72 patch and the landmark model's face crop: Y, U and V are resized separately
        (INTER_AREA when shrinking, an exact block average for integer factors; bilinear when
        enlarging), so a 288 px face crop costs one 72x72 conversion instead of a 288x288 one. Sizes are
        rounded up to even numbers, as I420 needs.
        """
        x0, y0 = max(0, x0) & ~1, max(0, y0) & ~1
        x1, y1 = min(self.width, x1 + (x1 & 1)), min(self.height, y1 + (y1 & 1))
        width_px, height_px = max(2, width_px + (width_px & 1)), max(2, height_px + (height_px & 1))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return np.zeros((height_px, width_px, 3), np.uint8)
        y, u = self.y[y0:y1, x0:x1], self.u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        v = self.v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        factor = (x1 - x0) // width_px
        if factor >= 1 and (x1 - x0, y1 - y0) == (factor * width_px, factor * height_px):
            y, u, v = shrink(y, factor), shrink(u, factor), shrink(v, factor)
        else:
            shrinking = width_px <= x1 - x0 and height_px <= y1 - y0
            method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            size, half = (width_px, height_px), (width_px // 2, height_px // 2)
            y = cv2.resize(y, size, interpolation=method)
            u = cv2.resize(u, half, interpolation=method)
            v = cv2.resize(v, half, interpolation=method)
        return _convert(y, u, v, cv2.COLOR_YUV2RGB_I420 if rgb else cv2.COLOR_YUV2BGR_I420)

    def grey_crop(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The Y plane over the rectangle: a grey image without any conversion (a view, not a copy)."""
        return self.y[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]

    def sample_bgr(self, step_px: int) -> np.ndarray:
        """Every step-th pixel (step rounded up to even) as BGR float32 [N, 3], from the BT.601 formula.

        For whole-frame statistics (brightness, clipped share) when there is no face: a few thousand
        pixels, converted with the textbook limited-range matrix (within a level of OpenCV's result).
        """
        step = max(2, step_px + (step_px & 1))
        luma = self.y[::step, ::step].astype(np.float32)
        cb = self.u[:: step // 2, :: step // 2][: luma.shape[0], : luma.shape[1]].astype(np.float32)
        cr = self.v[:: step // 2, :: step // 2][: luma.shape[0], : luma.shape[1]].astype(np.float32)
        return yuv_to_bgr_bt601(luma, cb, cr).reshape(-1, 3)


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """The image area-averaged by a whole `factor` (its sides multiples of it), for patches and tracking.

    OpenCV's INTER_AREA is fast only for halving (to 72 px: 3 us at factor 2, 22 at 3, 51 at 4, 85 at
    6, and 4-8 times slower again when the sides are not multiples of the factor), so the even part of
    the factor is taken as halvings and the odd rest in one step. Each halving rounds, so a pixel may
    differ from a one-step block average by a level: fine for appearance patches and optical flow, and
    never used for the colour traces.
    """
    while factor > 1 and factor % 2 == 0:
        height, width = image.shape[:2]
        image = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        factor //= 2
    if factor > 1:
        height, width = image.shape[:2]
        image = cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return image


def yuv_to_bgr_bt601(luma: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YCbCr -> BGR float32 (clipped to 0..255): the reference for OpenCV's I420 path."""
    y = 1.164383 * (luma.astype(np.float32) - 16.0)
    u = cb.astype(np.float32) - 128.0
    v = cr.astype(np.float32) - 128.0
    bgr = np.stack((y + 2.017232 * u, y - 0.391762 * u - 0.812968 * v, y + 1.596027 * v), axis=-1)
    return np.clip(bgr, 0.0, 255.0)


def _convert(y: np.ndarray, u: np.ndarray, v: np.ndarray, code: int) -> np.ndarray:
    height, width = y.shape
    packed = np.empty((height * 3 // 2, width), np.uint8)
    packed[:height] = y
    chroma = packed[height:].reshape(-1)
    quarter = (height // 2) * (width // 2)
    chroma[:quarter].reshape(height // 2, width // 2)[:] = u
    chroma[quarter:].reshape(height // 2, width // 2)[:] = v
    return cv2.cvtColor(packed, code)


class YuvFrame(Frame):
    """A `Frame` carrying I420 planes; `image` (BGR) is converted on first access and kept.

    `planes` lets consumers that know about it (the preprocessor) convert only crops; it is None only for
    a copy made by `dataclasses.replace`, which passes the BGR image. Pickling turns it into a `Frame`.
    """

    __slots__ = ("_bgr", "planes")
    planes: I420Planes | None
    _bgr: np.ndarray | None

    def __init__(
        self,
        image: np.ndarray | None = None,
        t_s: float = 0.0,
        index: int = 0,
        *,
        planes: I420Planes | None = None,
    ) -> None:
        if image is None and planes is None:
            raise ValueError("a YuvFrame needs its planes or its BGR image")
        object.__setattr__(self, "t_s", t_s)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "planes", planes)
        object.__setattr__(self, "_bgr", image)

    @property
    def image(self) -> np.ndarray:
        bgr = self._bgr
        if bgr is None:
            assert self.planes is not None
            bgr = self.planes.to_bgr()
            object.__setattr__(self, "_bgr", bgr)
        return bgr

    def __reduce__(self) -> tuple[Any, ...]:
        return (Frame, (self.image, self.t_s, self.index))
