"""Carrying the face between landmark runs: sparse Lucas-Kanade flow on a few stable landmarks.

Landmarks cost several ms; between them we only need how far the face moved. Tracking about twenty
rigid-ish points (nose, eye corners, forehead, chin) on a small grey copy of the face area costs a small
fraction of that, and its failure (points lost, or spread out) is the signal to re-run landmarks at once.

Flow is measured from the landmark frame itself to each new frame, starting from where the points were
last found, not from one frame to the next: chained frame-to-frame estimates add up their errors as a
random walk, so the longer landmarks wait the further the mask drifts, while flow from a fixed reference
stays as close at the end of a landmark interval as after one frame (`preprocess.placement`).
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

from capture.yuv import shrink
from preprocess.pixels import Pixels

# Grey tracking image width at most: enough texture for LK, small enough to be nearly free at 1080p. The
# face area is shrunk by a power of two (to 64-128 px wide), which `capture.yuv.shrink` takes as halvings,
# INTER_AREA's fast case.
TRACK_WIDTH_PX: Final = 128
# One 11 px window without a pyramid follows about 5 px per frame at tracking scale. That is more than
# the motion that re-runs landmarks anyway (3 % of the face's width, 1-3 px here), so pyramid levels only
# cost time: dropping the second level saved a tenth of tracking with the same heart rates on the real
# and rendered sets (benchmarks/README.md, preprocess section).
_LK_WINDOW_PX: Final = (11, 11)
_LK_LEVELS: Final = 0
_LK_CRITERIA: Final = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03)


def median_rows(values: np.ndarray) -> np.ndarray:
    """np.median(values, axis=0), bit for bit, by sorting: six times faster on the few dozen rows here,
    where np.median's overhead (NaN checks, partition set-up) is most of its cost."""
    ordered = np.sort(values, axis=0)
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class FaceTracker:
    """Translation of the face since the last landmark run, from LK flow against that run's frame.

    The tracked area is the face box plus a margin, fixed at the landmark run, so every frame is cropped
    identically and the flow is directly in (scaled) frame coordinates.
    """

    def __init__(self) -> None:
        self._rect: tuple[int, int, int, int] | None = None
        self._factor = 1  # the tracking image is the tracked area shrunk by this (a power of two)
        self._anchor: np.ndarray | None = None  # the grey tracking image of the landmark frame
        self._start_pts: np.ndarray | None = None  # float32 [N, 1, 2]: the points there, tracking px
        self._start_xy: list[tuple[float, float]] = []  # the same points as a list
        self._pts: np.ndarray | None = None  # float32 [N, 1, 2]: where LK last found them
        self._alive: list[bool] = []

    def start(self, pixels: Pixels, points: np.ndarray, box_px: tuple[float, ...]) -> None:
        """Begin tracking `points` (float32 [N, 2] frame px: the landmarks that move with the head, see
        `RegionSet.track_points`) from a landmark run on this frame."""
        height, width = pixels.height, pixels.width
        x, y, w, h = box_px
        margin_x, margin_y = 0.3 * w, 0.3 * h
        x0, y0 = max(0, int(x - margin_x)), max(0, int(y - margin_y))
        x1, y1 = min(width, int(x + w + margin_x) + 1), min(height, int(y + h + margin_y) + 1)
        if x1 - x0 < 8 or y1 - y0 < 8:
            self._rect = None
            return
        factor = 1  # a power of two, which `shrink` takes as halvings (the fast case of INTER_AREA)
        while (x1 - x0) > TRACK_WIDTH_PX * factor:
            factor *= 2
        x1, y1 = x0 + (x1 - x0) // factor * factor, y0 + (y1 - y0) // factor * factor
        self._rect = (x0, y0, x1, y1)
        self._factor = factor
        self._anchor = self._grey(pixels)
        pts = np.asarray(points - np.array([x0, y0], np.float32), np.float32) / np.float32(factor)
        self._start_pts = pts.astype(np.float32).reshape(-1, 1, 2)
        self._pts = self._start_pts.copy()
        self._start_xy = [(x, y) for x, y in pts.tolist()]
        self._alive = [True] * len(self._start_xy)

    def _grey(self, pixels: Pixels) -> np.ndarray:
        """The tracked area in grey at tracking scale (the Y plane itself for I420 frames)."""
        assert self._rect is not None
        x0, y0, x1, y1 = self._rect
        grey = pixels.grey_crop(x0, y0, x1, y1)
        return shrink(grey, self._factor)

    def update(self, pixels: Pixels) -> tuple[float, float] | None:
        """Face shift in frame pixels since `start`, or None when the track is lost."""
        if self._rect is None or self._anchor is None or self._start_pts is None or self._pts is None:
            return None
        grey = self._grey(pixels)
        # From the landmark frame, starting at the last positions (so the window only has to cover one
        # frame's motion, as frame-to-frame flow would); what it finds is where the next frame starts.
        pts, status, _err = cv2.calcOpticalFlowPyrLK(
            self._anchor,
            grey,
            self._start_pts,
            self._pts,
            winSize=_LK_WINDOW_PX,
            maxLevel=_LK_LEVELS,
            criteria=_LK_CRITERIA,
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
        )
        self._pts = pts
        # Plain Python from here: on ~20 points each numpy call costs more than the arithmetic.
        alive = self._alive
        dx: list[float] = []
        dy: list[float] = []
        for i, (found, (x, y), (x0, y0)) in enumerate(
            zip(status.ravel().tolist(), pts.reshape(-1, 2).tolist(), self._start_xy, strict=True)
        ):
            if alive[i] and found == 1:
                dx.append(x - x0)
                dy.append(y - y0)
            else:
                alive[i] = False
        if not dx or len(dx) < len(alive) // 2:
            self._rect = None
            return None
        shift_x, shift_y = _median(dx), _median(dy)
        # Points disagreeing a lot means rotation, scaling or expression: the translation model no
        # longer holds, so ask for landmarks.
        spread = _median([abs(d - shift_x) for d in dx] + [abs(d - shift_y) for d in dy])
        if spread > 2.0:
            self._rect = None
            return None
        return shift_x * self._factor, shift_y * self._factor


def _median(values: list[float]) -> float:
    """The median of a short list (the mean of the middle two for an even length), as np.median gives."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2
