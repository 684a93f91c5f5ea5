"""Quality monitoring: this frame's light, face size, motion and timing, and the warnings they deserve.

Every measure is relative (face widths, shares of the face or frame, luma levels, interval ratios), so
that the same scene gives the same state at any resolution: a 4K copy of a video must not look shakier
or smaller than the 720p original.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from preprocess import extract, quality
from preprocess.pixels import Pixels
from preprocess.quality import QualityState, QualityThresholds, QualityWarning

Box = tuple[float, float, float, float]


class QualityMonitor:
    """Keeps the little history quality needs (frame intervals, face speed) and judges each frame."""

    def __init__(self, thresholds: QualityThresholds, *, face_mode: bool) -> None:
        self.thresholds = thresholds
        self.face_mode = face_mode
        self.warning_counts: dict[str, int] = {}
        self._intervals_s: deque[float] = deque(maxlen=60)
        self._timing: tuple[float, float] | None = None  # (jitter, lost share) of the intervals above
        self._speed = 0.0
        self._prev_center: tuple[float, float] | None = None

    def frame_interval(self, interval_s: float) -> None:
        """The time since the previous accepted frame, kept to the microsecond.

        The timing statistics depend only on which intervals the window holds, not on their order, so
        when the interval leaving the window equals the one arriving (a steady replay or camera, once
        rounded: pts arithmetic leaves last-bit differences) the last statistics still hold.
        """
        interval_s = round(interval_s, 6)
        intervals = self._intervals_s
        leaving = intervals[0] if len(intervals) == intervals.maxlen else None
        intervals.append(interval_s)
        if leaving != interval_s:
            self._timing = None

    def observe(
        self, pixels: Pixels, box: Box | None, stats: np.ndarray | None
    ) -> tuple[QualityState, list[QualityWarning]]:
        """This frame's quality state and warnings, from the kernel's `stats` over the regions (or the
        whole frame when there is no face) and the face box in frame pixels."""
        width, height = pixels.width, pixels.height
        if stats is not None and stats[extract.STAT_PIXELS] > 0:
            n_pixels = float(stats[extract.STAT_PIXELS])
            brightness = stats[extract.STAT_LUMA_MILLI_SUM] / 1000.0 / n_pixels
            clipped = stats[extract.STAT_CLIPPED] / n_pixels
        else:
            # No face: judge the whole frame from a sparse sample (a few thousand pixels is plenty).
            step = max(1, int(math.sqrt(width * height / 4096)))
            sample = pixels.sample_bgr(step)
            brightness = float((sample @ np.array([0.114, 0.587, 0.299], np.float32)).mean())
            clipped = float((sample >= extract.CLIP_LEVEL).any(axis=1).mean())
        center_offset = None
        area_share = 0.0
        if box is not None:
            x, y, w, h = box
            cx, cy = x + w / 2, y + h / 2
            center_offset = (cx / width - 0.5, cy / height - 0.5)
            area_share = (w * h) / (width * height)
            if self._prev_center is not None and self._intervals_s and self._intervals_s[-1] > 0:
                step_widths = math.hypot(cx - self._prev_center[0], cy - self._prev_center[1]) / max(w, 1.0)
                speed = step_widths / self._intervals_s[-1]
                self._speed += 0.3 * (speed - self._speed)
            self._prev_center = (cx, cy)
        else:
            self._prev_center = None
            self._speed = 0.0
        jitter_known = len(self._intervals_s) >= 10
        jitter = lost = 0.0
        if jitter_known:
            if self._timing is None:
                intervals = self._intervals_s
                self._timing = (quality.interval_jitter(intervals), quality.lost_share(intervals))
            jitter, lost = self._timing
        state = QualityState(
            brightness_luma=float(brightness),
            clipped_share=float(clipped),
            face_present=box is not None and self.face_mode,
            face_area_share=float(area_share) if self.face_mode else 1.0,
            face_speed_widths_per_s=float(self._speed),
            interval_jitter=jitter,
            lost_share=lost,
        )
        warnings = quality.frame_warnings(
            state, center_offset, self.thresholds, face_mode=self.face_mode, jitter_known=jitter_known
        )
        for warning in warnings:
            self.warning_counts[warning.code] = self.warning_counts.get(warning.code, 0) + 1
        return state, warnings
