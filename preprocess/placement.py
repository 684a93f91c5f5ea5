"""Where the region mask sits on each frame: landmark cadence, anchoring and smoothing of the face's position.

The region mask is drawn from an *anchor* landmark set and only moved (sub-pixel, see
`extract.region_sums`) while the face merely translates; it is redrawn only when the face changes shape
beyond `reshape_tolerance_widths`. Redrawing or nudging a mask by a pixel changes which boundary pixels
are averaged, a step in the trace as large as the pulse itself, so the fewer such events the cleaner the
trace, whichever the landmark cadence. For the same reason the translation is smoothed over time, so that
landmark jitter does not move the mask either.

Landmarks run every k-th frame (k adapts to how well optical flow predicted the face) and flow carries
the face in between; motion above `redetect_motion_widths` or a lost track calls for landmarks at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from preprocess import extract, regions
from preprocess.face import LandmarkBackend
from preprocess.pixels import Pixels
from preprocess.smoothing import OneEuroFilter2D
from preprocess.timing import StageTimer
from preprocess.tracking import FaceTracker, median_rows

Box = tuple[float, float, float, float]  # x, y, w, h in frame pixels


@dataclass(frozen=True, slots=True)
class CadenceConfig:
    """Landmark cadence and position smoothing (the `PreprocessConfig` fields of the same names)."""

    landmark_min_interval_frames: int = 2
    landmark_max_interval_frames: int = 64
    cadence_tolerance_widths: float = 0.02
    redetect_motion_widths: float = 0.03
    reshape_tolerance_widths: float = 0.015
    position_min_cutoff_hz: float = 0.5
    position_beta_hz_per_width_s: float = 20.0


@dataclass(frozen=True, slots=True)
class Placement:
    """This frame's region mask (at whole pixels), its sub-pixel rest and the face box, or no face."""

    mask: regions.RegionMask | None
    fraction_q8: tuple[int, int]  # sub-pixel offset of the mask in 1/256 px
    box_px: Box | None
    landmarks_ran: bool


class Placer(Protocol):
    """What the pipeline asks every frame: where the regions are."""

    def update(self, pixels: Pixels, t_s: float) -> Placement: ...


class FullFramePlacement:
    """Full-frame mode: one region covering the whole frame, never moved."""

    def __init__(self) -> None:
        self._placement: Placement | None = None

    def update(self, pixels: Pixels, t_s: float) -> Placement:
        if self._placement is None:
            width, height = pixels.width, pixels.height
            mask = regions.full_frame_mask(width, height)
            self._placement = Placement(mask, (0, 0), (0.0, 0.0, float(width), float(height)), False)
        return self._placement


class FacePlacement:
    """Tracks the face and runs landmarks when the cadence, motion or a lost track calls for it."""

    def __init__(self, backend: LandmarkBackend | None, config: CadenceConfig, timer: StageTimer) -> None:
        self._backend = backend
        self._cfg = config
        self._timer = timer
        self._regions = backend.regions if backend is not None else regions.FACE_MESH_REGIONS
        track_points = self._regions.track_points
        self._track_points = list(track_points) if track_points is not None else None
        self._tracker = FaceTracker()
        self._smoother = OneEuroFilter2D(config.position_min_cutoff_hz, config.position_beta_hz_per_width_s)
        self._mask: regions.RegionMask | None = None
        self._base_box: Box | None = None
        self._anchor: np.ndarray | None = None
        self._offset = (0.0, 0.0)  # smoothed face translation since the anchor, px
        self._raw_offset = (0.0, 0.0)  # unsmoothed: last landmark translation, carried by flow
        self._track_origin = (0.0, 0.0)  # _raw_offset when tracking (re)started
        self._interval = config.landmark_min_interval_frames
        self._since_landmarks = 0
        self.landmark_runs = 0
        self.mask_redraws = 0

    def update(self, pixels: Pixels, t_s: float) -> Placement:
        """The mask's placement on this frame (landmarks, tracking and mask work are timed inside)."""
        ran = self._step(pixels, t_s)
        return self._placed(ran)

    def _step(self, pixels: Pixels, t_s: float) -> bool:
        cfg = self._cfg
        every_frame = cfg.landmark_max_interval_frames <= 1
        tracked: tuple[float, float] | None = None
        flow_step = (0.0, 0.0)  # face motion on this frame according to optical flow, px
        run = self._mask is None or every_frame
        restart = self._mask is None  # nothing to smooth against: take the landmarks as they are
        if not run:
            with self._timer.stage("tracking"):
                shift = self._tracker.update(pixels)
            assert self._base_box is not None
            if shift is None:
                run, restart = True, True
                self._interval = cfg.landmark_min_interval_frames
            else:
                tracked = (self._track_origin[0] + shift[0], self._track_origin[1] + shift[1])
                flow_step = (tracked[0] - self._raw_offset[0], tracked[1] - self._raw_offset[1])
                self._raw_offset = tracked
                self._since_landmarks += 1
                if math.hypot(*flow_step) > cfg.redetect_motion_widths * self._base_box[2]:
                    run, restart, tracked = True, True, None
                    self._interval = cfg.landmark_min_interval_frames
                elif self._since_landmarks >= self._interval:
                    run = True
        if not run:
            self._offset = self._smoothed(self._raw_offset, flow_step, t_s, restart=False)
            return False
        with self._timer.stage("landmarks"):
            landmarks = self._landmarks(pixels)
        self.landmark_runs += 1
        self._since_landmarks = 0
        if landmarks is None:
            self._mask, self._base_box, self._anchor = None, None, None
            self._interval = cfg.landmark_min_interval_frames
            return True
        with self._timer.stage("masks"):
            self._adopt(landmarks, tracked, flow_step, pixels, t_s, restart)
        if self._mask is not None and not every_frame:
            with self._timer.stage("tracking"):
                self._track_origin = self._raw_offset
                x, y, w, h = self._base_box  # type: ignore[misc]  # set together with the mask
                points = landmarks if self._track_points is None else landmarks[self._track_points]
                self._tracker.start(pixels, points, (x + self._offset[0], y + self._offset[1], w, h))
        return True

    def _adopt(
        self,
        landmarks: np.ndarray,
        tracked: tuple[float, float] | None,
        flow_step: tuple[float, float],
        pixels: Pixels,
        t_s: float,
        restart: bool,
    ) -> None:
        """Take a landmark reading: adapt the cadence, then move the mask or redraw it."""
        cfg = self._cfg
        translation = self._anchor_translation(landmarks)
        if tracked is not None and translation is not None and self._base_box is not None:
            error = math.hypot(tracked[0] - translation[0], tracked[1] - translation[1])
            if error <= cfg.cadence_tolerance_widths * self._base_box[2]:
                self._interval = min(self._interval * 2, cfg.landmark_max_interval_frames)
            else:
                self._interval = max(self._interval // 2, cfg.landmark_min_interval_frames)
        if translation is None:
            mask = self._regions.rasterise(landmarks, pixels.width, pixels.height)
            self._mask = _skin_only(mask, pixels)
            self._anchor = landmarks if self._mask is not None else None
            self._base_box = self._regions.face_box(landmarks) if self._mask is not None else None
            self._offset, self._raw_offset = (0.0, 0.0), (0.0, 0.0)
            self.mask_redraws += 1
            self._smoother.reset(0.0, 0.0, t_s)
        else:
            self._raw_offset = translation
            self._offset = self._smoothed(translation, flow_step, t_s, restart)

    def _landmarks(self, pixels: Pixels) -> np.ndarray | None:
        if self._backend is None:
            return None
        return self._backend.detect(pixels)

    def _anchor_translation(self, landmarks: np.ndarray) -> tuple[float, float] | None:
        """How far the face moved since the anchor, or None when it changed shape (mask must be redrawn)."""
        if self._anchor is None or self._base_box is None:
            return None
        moved = landmarks - self._anchor
        translation = median_rows(moved)
        residual = float(median_rows(np.linalg.norm(moved - translation, axis=1)))
        if residual > self._cfg.reshape_tolerance_widths * self._base_box[2]:
            return None
        return float(translation[0]), float(translation[1])

    def _smoothed(
        self, raw: tuple[float, float], flow_step: tuple[float, float], t_s: float, restart: bool
    ) -> tuple[float, float]:
        """The mask's offset for this frame: the raw landmark position filtered over time, in px.

        `raw` is the last landmark translation, carried by optical flow when landmarks did not run on
        this frame; the filter runs on every frame either way, so every cadence gets the same smoothing.
        It predicts the filtered position moved by this frame's `flow_step` (zero without tracking), so
        flow-tracked motion passes without lag and only the landmarks' jitter is smoothed. A reading too
        far from the prediction to be jitter (a jump, a lost track) restarts the filter there. Positions
        are in face widths, so the filter's speed gain does not depend on the face's size in the frame.
        """
        assert self._base_box is not None
        width_px = max(self._base_box[2], 1.0)
        x, y = raw[0] / width_px, raw[1] / width_px
        ex = (self._offset[0] + flow_step[0]) / width_px
        ey = (self._offset[1] + flow_step[1]) / width_px
        if restart or math.hypot(x - ex, y - ey) > self._cfg.redetect_motion_widths:
            fx, fy = self._smoother.reset(x, y, t_s)
        else:
            fx, fy = self._smoother.update(x, y, t_s, predicted=(ex, ey))
        return fx * width_px, fy * width_px

    def _placed(self, landmarks_ran: bool) -> Placement:
        """The mask at its whole-pixel offset with the kernel's 1/256 px fraction, and the moved face box."""
        if self._mask is None or self._base_box is None:
            return Placement(None, (0, 0), None, landmarks_ran)
        steps = extract.SUBPIXEL_STEPS
        qx = math.floor(self._offset[0] * steps + 0.5)
        qy = math.floor(self._offset[1] * steps + 0.5)
        dx, dy = qx // steps, qy // steps
        mask = self._mask.moved(dx, dy) if dx or dy else self._mask
        x, y, w, h = self._base_box
        box = (x + self._offset[0], y + self._offset[1], w, h)
        return Placement(mask, (qx % steps, qy % steps), box, landmarks_ran)


def _skin_only(mask: regions.RegionMask | None, pixels: Pixels) -> regions.RegionMask | None:
    """The mask with its non-skin pixels removed, judged once, on the frame it is drawn on.

    Testing the skin rule on every frame makes pixels near its bounds flicker in and out of the mean
    with sensor noise, compression and every slow change of light, and that flicker is noise in the
    trace. Decided once per mask and then carried with the face, the selection is stable: on the
    realistic renders this gained 1-3 dB of pulse SNR over the per-frame rule, and on the real
    UBFC-rPPG videos it keeps the per-frame rule's advantage over no rule (hair, brows and background
    edges stay out).
    """
    if mask is None:
        return None
    height, width = mask.labels.shape
    crop = pixels.crop_bgr(mask.x0, mask.y0, mask.x0 + width, mask.y0 + height)
    keep = np.zeros(mask.labels.shape, bool)
    keep[: crop.shape[0], : crop.shape[1]] = extract.skin_pixels(crop)
    return dataclasses.replace(mask, labels=np.where(keep, mask.labels, 0).astype(mask.labels.dtype))
