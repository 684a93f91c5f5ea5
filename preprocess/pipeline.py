"""The preprocessor: frames in, per-frame features out (live), and a `Measurement` at the end.

Per frame, in face mode: landmarks only every k-th frame (k adapts to how well tracking predicted the
face), sparse-flow tracking in between, region labels rasterised once per landmark run and moved with the
tracked face, one numba pass for all region sums, a 72x72 patch and the quality checks. Timings per stage
are kept in `stage_seconds` so the benchmark (and a curious user) can see where the time goes.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from capture.frame import Frame
from contract import __version__
from contract.tensor import (
    FACE_REGIONS,
    FULL_FRAME_REGIONS,
    PATCH_SIZE_PX,
    VIDEO_BITS_PER_PIXEL_KEY,
    Measurement,
    Source,
    TensorMetadata,
    validate,
)
from preprocess import extract, patches, pulse, quality, regions
from preprocess.face import DEFAULT_MAX_INPUT_SIDE_PX, LandmarkBackend, default_backend
from preprocess.pixels import Pixels, landmark_input_size, pixels_of
from preprocess.quality import QualityState, QualityThresholds, QualityTooLow, QualityWarning
from preprocess.smoothing import OneEuroFilter2D
from preprocess.tracking import FaceTracker

RegionMode = Literal["face", "full-frame"]
ProgressCallback = Callable[[str, float], None]
STAGES: Final = ("landmarks", "tracking", "masks", "extraction", "patch", "quality")
_FACE_INDEX: Final = FACE_REGIONS.index("face")


def sdk_version() -> str:
    """`vitalcam/<version>` for the tensor metadata."""
    return f"vitalcam/{__version__}"


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """How to preprocess. The defaults suit a webcam or a phone video of a face at arm's length."""

    regions: RegionMode = "face"
    include_patches: bool = True
    source: Source = "camera"
    # Landmark cadence: run landmarks at least every `landmark_max_interval_frames` frames; after each
    # run that tracking predicted within `cadence_tolerance_widths` face widths the interval doubles,
    # otherwise it halves. Per-frame tracked motion above `redetect_motion_widths` forces a run at once.
    # Set landmark_max_interval_frames=1 for landmarks on every frame (no tracking).
    landmark_min_interval_frames: int = 2
    landmark_max_interval_frames: int = 8
    cadence_tolerance_widths: float = 0.02
    redetect_motion_widths: float = 0.03
    reshape_tolerance_widths: float = 0.015  # landmark residual after translation that redraws masks
    # One Euro filter on the face translation that places the masks (see `preprocess.smoothing`): the
    # cut-off is `position_min_cutoff_hz` at rest, below the pulse band so landmark jitter stays out of
    # it, and rises by `position_beta_hz_per_width_s` per face width per second of head speed so real
    # motion is followed without lag. A landmark reading further than `redetect_motion_widths` from where
    # the face was expected restarts the filter there. position_min_cutoff_hz=inf turns smoothing off.
    position_min_cutoff_hz: float = 0.5
    position_beta_hz_per_width_s: float = 20.0
    patch_scale: float = 1.2  # patch side / larger face box side, before snapping to a multiple of 72 px
    min_face_share: float = 0.7  # of frames, else QualityTooLow(NO_FACE)
    min_usable_s: float = 15.0  # seconds of frames with skin pixels, else QualityTooLow(TOO_SHORT)
    preview_window_s: float = 10.0
    preview_every_frames: int = 15
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    # Compressed bits per pixel of the video being replayed (capture's SourceInfo.bits_per_pixel), sent
    # in the tensor's metadata so the backend can say when compression limits the reading.
    video_bits_per_pixel: float | None = None


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """What the live preview needs about one frame."""

    t_s: float
    index: int
    face_box_px: tuple[int, int, int, int] | None  # x, y, w, h in frame pixels
    polygons: list[np.ndarray]  # int32 [N, 2] outlines: forehead, left cheek, right cheek, face oval
    quality: QualityState
    warnings: list[QualityWarning]
    pulse_preview: np.ndarray | None  # display-only pulse over the last ~10 s, scaled to -1..1
    pulse_bpm_preview: float | None
    landmarks_ran: bool  # whether the landmark model ran on this frame (cadence diagnostics)


class Preprocessor:
    """Turns frames into traces, patches and quality, one `push` at a time; `finish` builds the tensor."""

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        *,
        backend: LandmarkBackend | None = None,
        frame_size: tuple[int, int] | None = None,
    ) -> None:
        self.config = config or PreprocessConfig()
        if self.config.regions not in ("face", "full-frame"):
            raise ValueError(f"regions must be 'face' or 'full-frame', got {self.config.regions!r}")
        self._face_mode = self.config.regions == "face"
        self.region_names = FACE_REGIONS if self._face_mode else FULL_FRAME_REGIONS
        self._backend = backend if backend is not None or not self._face_mode else default_backend()
        self._owns_backend = backend is None
        self._tracker = FaceTracker()
        self.frame_size: tuple[int, int] | None = frame_size
        self.frames_seen = 0
        self.frames_dropped = 0  # non-increasing timestamps
        self.landmark_runs = 0
        self.warning_counts: dict[str, int] = {}
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._mask: regions.RegionMask | None = None
        self._base_box: tuple[float, float, float, float] | None = None
        self._anchor: np.ndarray | None = None
        self._offset = (0.0, 0.0)  # face translation since the anchor, px
        self._placed_offset = (0, 0)  # where the mask currently sits, whole px
        self._fraction_q8 = (0, 0)  # and the sub-pixel rest, in 1/256 px
        self._raw_offset = (0.0, 0.0)  # unsmoothed: last landmark translation, carried by flow
        self._track_origin = (0.0, 0.0)  # _raw_offset when tracking (re)started
        self._smoother = OneEuroFilter2D(
            self.config.position_min_cutoff_hz, self.config.position_beta_hz_per_width_s
        )
        self.mask_redraws = 0
        self._interval = self.config.landmark_min_interval_frames
        self._since_landmarks = 0
        self._full_mask: regions.RegionMask | None = None
        self._t_s: list[float] = []
        self._rgb: list[np.ndarray] = []
        self._skin_px: list[np.ndarray] = []
        self._box: list[np.ndarray] = []
        self._patches: list[np.ndarray] = []
        self._intervals_s: deque[float] = deque(maxlen=60)
        self._speed = 0.0
        self._prev_center: tuple[float, float] | None = None
        self._preview: tuple[np.ndarray, float] | None = None
        self._last: FrameFeatures | None = None
        extract.warm_up()

    # -- live ---------------------------------------------------------------------------------------

    def push(self, frame: Frame) -> FrameFeatures:
        """Process one frame and return what the preview shows for it."""
        pixels = pixels_of(frame)
        width, height = pixels.width, pixels.height
        if self.frame_size is None:
            self.frame_size = (width, height)
        elif self.frame_size != (width, height):
            raise ValueError(f"frame size changed from {self.frame_size} to {(width, height)}")
        if self._t_s and frame.t_s <= self._t_s[-1]:
            # A repeated or reordered timestamp would break the strictly increasing t_s of the tensor.
            self.frames_dropped += 1
            if self._last is not None:
                return self._last
        else:
            if self._t_s:
                self._intervals_s.append(frame.t_s - self._t_s[-1])
        self.frames_seen += 1
        if self._face_mode:
            features = self._push_face(frame, pixels, width, height)
        else:
            features = self._push_full_frame(frame, pixels, width, height)
        for warning in features.warnings:
            self.warning_counts[warning.code] = self.warning_counts.get(warning.code, 0) + 1
        self._last = features
        return features

    def _push_face(self, frame: Frame, pixels: Pixels, width: int, height: int) -> FrameFeatures:
        clock = time.perf_counter
        landmarks_ran = self._update_face(pixels, width, height, frame.t_s)
        mask, box = self._placed()
        t0 = clock()
        if mask is not None:
            fx_q8, fy_q8 = self._fraction_q8
            sums, counts, stats = extract.region_sums_in(
                pixels, mask.labels, mask.x0, mask.y0, fx_q8, fy_q8, len(FACE_REGIONS), False
            )
        else:
            sums = np.zeros((len(FACE_REGIONS), 3), np.int64)
            counts = np.zeros(len(FACE_REGIONS), np.int64)
            stats = None
        t1 = clock()
        patch = None
        if self.config.include_patches:
            if box is not None:
                x0, y0, side = patches.patch_box(box, width, height, self.config.patch_scale)
                patch = patches.to_patch(pixels.crop_bgr(x0, y0, x0 + side, y0 + side))
            else:
                patch = np.zeros((PATCH_SIZE_PX, PATCH_SIZE_PX, 3), np.uint8)
        t2 = clock()
        self.stage_seconds["extraction"] += t1 - t0
        self.stage_seconds["patch"] += t2 - t1
        box_norm = (
            np.array([box[0] / width, box[1] / height, box[2] / width, box[3] / height], np.float32)
            if box is not None
            else np.full(4, np.nan, np.float32)
        )
        self._record(frame.t_s, sums, counts, box_norm, patch)
        features = self._features(frame, pixels, box, mask, stats, landmarks_ran, width, height)
        self.stage_seconds["quality"] += clock() - t2
        return features

    def _push_full_frame(self, frame: Frame, pixels: Pixels, width: int, height: int) -> FrameFeatures:
        image = pixels.to_bgr()
        clock = time.perf_counter
        if self._full_mask is None:
            self._full_mask = regions.full_frame_mask(width, height)
        t0 = clock()
        sums, counts, stats = extract.region_sums(image, self._full_mask.labels, 0, 0, 0, 0, 1, False)
        t1 = clock()
        patch = patches.full_frame_patch(image) if self.config.include_patches else None
        t2 = clock()
        self.stage_seconds["extraction"] += t1 - t0
        self.stage_seconds["patch"] += t2 - t1
        self._record(frame.t_s, sums, counts, np.array([0.0, 0.0, 1.0, 1.0], np.float32), patch)
        box = (0.0, 0.0, float(width), float(height))
        features = self._features(frame, pixels, box, self._full_mask, stats, False, width, height)
        self.stage_seconds["quality"] += clock() - t2
        return features

    def _update_face(self, pixels: Pixels, width: int, height: int, t_s: float) -> bool:
        """Track the face and run landmarks when the cadence, motion or a lost track calls for it.

        The region mask is drawn from an *anchor* landmark set and only moved (sub-pixel, see
        `extract.region_sums`) while the face merely translates; it is redrawn only when the face changes
        shape beyond `reshape_tolerance_widths`. Redrawing or nudging a mask by a pixel changes which
        boundary pixels are averaged, a step in the trace as large as the pulse itself, so the fewer such
        events the cleaner the trace, whichever the landmark cadence. For the same reason the translation
        is smoothed over time (`_smoothed`), so that landmark jitter does not move the mask either.
        """
        clock = time.perf_counter
        cfg = self.config
        every_frame = cfg.landmark_max_interval_frames <= 1
        tracked: tuple[float, float] | None = None
        flow_step = (0.0, 0.0)  # face motion on this frame according to optical flow, px
        run = self._mask is None or every_frame
        restart = self._mask is None  # nothing to smooth against: take the landmarks as they are
        if not run:
            t0 = clock()
            shift = self._tracker.update(pixels)
            self.stage_seconds["tracking"] += clock() - t0
            assert self._base_box is not None
            if shift is None:
                run, self._interval = True, cfg.landmark_min_interval_frames
                restart = True
            else:
                tracked = (self._track_origin[0] + shift[0], self._track_origin[1] + shift[1])
                flow_step = (tracked[0] - self._raw_offset[0], tracked[1] - self._raw_offset[1])
                self._raw_offset = tracked
                self._since_landmarks += 1
                if math.hypot(*flow_step) > cfg.redetect_motion_widths * self._base_box[2]:
                    run, self._interval = True, cfg.landmark_min_interval_frames
                    tracked = None
                    restart = True
                elif self._since_landmarks >= self._interval:
                    run = True
        if not run:
            self._offset = self._smoothed(self._raw_offset, flow_step, t_s, restart=False)
            self._place()
            return False
        t0 = clock()
        landmarks = self._landmarks(pixels, width, height)
        t1 = clock()
        self.stage_seconds["landmarks"] += t1 - t0
        self.landmark_runs += 1
        self._since_landmarks = 0
        if landmarks is None:
            self._mask, self._base_box, self._anchor = None, None, None
            self._interval = cfg.landmark_min_interval_frames
            return True
        translation = self._anchor_translation(landmarks)
        if tracked is not None and translation is not None:
            error = math.hypot(tracked[0] - translation[0], tracked[1] - translation[1])
            if error <= cfg.cadence_tolerance_widths * self._base_box[2]:  # type: ignore[index]
                self._interval = min(self._interval * 2, cfg.landmark_max_interval_frames)
            else:
                self._interval = max(self._interval // 2, cfg.landmark_min_interval_frames)
        if translation is None:
            self._mask = self._skin_only(regions.rasterise(landmarks, width, height), pixels)
            self._anchor = landmarks if self._mask is not None else None
            self._base_box = regions.face_box(landmarks) if self._mask is not None else None
            self._offset, self._raw_offset, self._placed_offset = (0.0, 0.0), (0.0, 0.0), (0, 0)
            self.mask_redraws += 1
            self._smoother.reset(0.0, 0.0, t_s)
        else:
            self._raw_offset = translation
            self._offset = self._smoothed(translation, flow_step, t_s, restart)
        self._place()
        t2 = clock()
        if self._mask is not None and not every_frame:
            self._track_origin = self._raw_offset
            box = self._base_box
            assert box is not None
            moved_box = (box[0] + self._offset[0], box[1] + self._offset[1], box[2], box[3])
            self._tracker.start(pixels, landmarks, moved_box)
        t3 = clock()
        self.stage_seconds["masks"] += t2 - t1
        self.stage_seconds["tracking"] += t3 - t2
        return True

    @staticmethod
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

    def _landmarks(self, pixels: Pixels, width: int, height: int) -> np.ndarray | None:
        """Landmarks in frame pixels, from a <= 640 px copy (all the model can use, and cheap from I420)."""
        if self._backend is None:
            return None
        small_w, small_h = landmark_input_size(width, height, DEFAULT_MAX_INPUT_SIDE_PX)
        landmarks = self._backend.detect(pixels.small_bgr(small_w, small_h))
        if landmarks is None or (small_w, small_h) == (width, height):
            return landmarks
        return landmarks * np.array([width / small_w, height / small_h], np.float32)

    def _anchor_translation(self, landmarks: np.ndarray) -> tuple[float, float] | None:
        """How far the face moved since the anchor, or None when it changed shape (mask must be redrawn)."""
        if self._anchor is None or self._base_box is None:
            return None
        moved = landmarks - self._anchor
        translation = np.median(moved, axis=0)
        residual = float(np.median(np.linalg.norm(moved - translation, axis=1)))
        if residual > self.config.reshape_tolerance_widths * self._base_box[2]:
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
        if restart or math.hypot(x - ex, y - ey) > self.config.redetect_motion_widths:
            fx, fy = self._smoother.reset(x, y, t_s)
        else:
            fx, fy = self._smoother.update(x, y, t_s, predicted=(ex, ey))
        return fx * width_px, fy * width_px

    def _place(self) -> None:
        """Split the face offset into the mask's whole-pixel position and the kernel's 1/256 px fraction."""
        steps = extract.SUBPIXEL_STEPS
        qx = math.floor(self._offset[0] * steps + 0.5)
        qy = math.floor(self._offset[1] * steps + 0.5)
        self._placed_offset = (qx // steps, qy // steps)
        self._fraction_q8 = (qx % steps, qy % steps)

    def _placed(self) -> tuple[regions.RegionMask | None, tuple[float, float, float, float] | None]:
        """The region mask at its placed offset, and the face box at the tracked offset."""
        if self._mask is None or self._base_box is None:
            return None, None
        dx, dy = self._placed_offset
        x, y, w, h = self._base_box
        mask = self._mask.moved(dx, dy) if dx or dy else self._mask
        return mask, (x + self._offset[0], y + self._offset[1], w, h)

    def _record(
        self,
        t_s: float,
        sums: np.ndarray,
        counts: np.ndarray,
        box_norm: np.ndarray,
        patch: np.ndarray | None,
    ) -> None:
        self._t_s.append(t_s)
        self._rgb.append(extract.means_from_sums(sums, counts))
        self._skin_px.append(counts.astype(np.int32))
        self._box.append(box_norm)
        if patch is not None:
            self._patches.append(patch)

    def _features(
        self,
        frame: Frame,
        pixels: Pixels,
        box: tuple[float, float, float, float] | None,
        mask: regions.RegionMask | None,
        stats: np.ndarray | None,
        landmarks_ran: bool,
        width: int,
        height: int,
    ) -> FrameFeatures:
        if stats is not None and stats[extract.STAT_PIXELS] > 0:
            pixels = float(stats[extract.STAT_PIXELS])
            brightness = stats[extract.STAT_LUMA_MILLI_SUM] / 1000.0 / pixels
            clipped = stats[extract.STAT_CLIPPED] / pixels
        else:
            # No face: judge the whole frame from a sparse sample (a few thousand pixels is plenty).
            step = max(1, int(math.sqrt(width * height / 4096)))
            sample = pixels.sample_bgr(step)
            brightness = float((sample @ np.array([0.114, 0.587, 0.299], np.float32)).mean())
            clipped = float((sample >= extract.CLIP_LEVEL).any(axis=1).mean())
        face_present = box is not None and self._face_mode
        center_offset = None
        area_share = 0.0
        if box is not None:
            x, y, w, h = box
            cx, cy = x + w / 2, y + h / 2
            center_offset = (cx / width - 0.5, cy / height - 0.5)
            area_share = (w * h) / (width * height)
            if self._prev_center is not None and len(self._intervals_s) and self._intervals_s[-1] > 0:
                step_widths = math.hypot(cx - self._prev_center[0], cy - self._prev_center[1]) / max(w, 1.0)
                speed = step_widths / self._intervals_s[-1]
                self._speed += 0.3 * (speed - self._speed)
            self._prev_center = (cx, cy)
        else:
            self._prev_center = None
            self._speed = 0.0
        jitter = 0.0
        if len(self._intervals_s) >= 10:
            intervals = np.fromiter(self._intervals_s, float)
            jitter = float(intervals.std() / max(intervals.mean(), 1e-9))
        state = QualityState(
            brightness_luma=float(brightness),
            clipped_share=float(clipped),
            face_present=bool(face_present),
            face_area_share=float(area_share) if self._face_mode else 1.0,
            face_speed_widths_per_s=float(self._speed),
            interval_jitter=jitter,
        )
        warnings = quality.frame_warnings(
            state,
            center_offset,
            self.config.thresholds,
            face_mode=self._face_mode,
            jitter_known=len(self._intervals_s) >= 10,
        )
        if self.frames_seen % self.config.preview_every_frames == 0:
            self._preview = self._pulse_preview()
        polygons = list(mask.polygons) if mask is not None and self._face_mode else []
        box_px = tuple(round(v) for v in box) if box is not None and self._face_mode else None
        return FrameFeatures(
            t_s=frame.t_s,
            index=frame.index,
            face_box_px=box_px,  # type: ignore[arg-type]
            polygons=polygons,
            quality=state,
            warnings=warnings,
            pulse_preview=self._preview[0] if self._preview else None,
            pulse_bpm_preview=self._preview[1] if self._preview else None,
            landmarks_ran=landmarks_ran,
        )

    def _pulse_preview(self) -> tuple[np.ndarray, float] | None:
        """POS over the last `preview_window_s` of the whole-face (or frame) trace."""
        if not self._t_s:
            return None
        t_end = self._t_s[-1]
        start = len(self._t_s)
        while start > 0 and t_end - self._t_s[start - 1] <= self.config.preview_window_s:
            start -= 1
        region = _FACE_INDEX if self._face_mode else 0
        t_s = np.asarray(self._t_s[start:])
        rgb = np.array([row[region] for row in self._rgb[start:]], np.float64)
        present = np.isfinite(rgb).all(axis=1)
        if present.mean() < 0.8:
            return None
        return pulse.preview(t_s[present], rgb[present])

    # -- end of measurement ---------------------------------------------------------------------------

    def finish(self) -> Measurement:
        """The measurement tensor, or QualityTooLow when there is not enough usable data in it."""
        n = len(self._t_s)
        if n < 2:
            raise QualityTooLow(quality.NO_FRAMES, f"Only {n} frame(s) were captured; nothing to measure.")
        skin_px = np.stack(self._skin_px)
        t_s = np.asarray(self._t_s, np.float64)
        if self._face_mode:
            face_present = ~np.isnan(np.stack(self._box)[:, 0])
            share = float(face_present.mean())
            if share < self.config.min_face_share:
                raise QualityTooLow(
                    quality.NO_FACE,
                    f"A face was found in only {share:.0%} of the frames "
                    f"(at least {self.config.min_face_share:.0%} needed): face the camera and retry.",
                )
        usable = skin_px.max(axis=1) > 0
        intervals = np.diff(t_s)
        usable_s = float(intervals[usable[1:] & usable[:-1]].sum())
        if usable_s < self.config.min_usable_s:
            raise QualityTooLow(
                quality.TOO_SHORT,
                f"Only {usable_s:.1f} s of usable video (at least {self.config.min_usable_s:g} s needed): "
                "hold still in good light for longer.",
            )
        width, height = self.frame_size or (0, 0)
        extra = {}
        if self.config.video_bits_per_pixel is not None:
            extra[VIDEO_BITS_PER_PIXEL_KEY] = f"{self.config.video_bits_per_pixel:.5f}"
        measurement = Measurement(
            t_s=t_s,
            rgb=np.stack(self._rgb).astype(np.float32, copy=False),
            skin_px=skin_px.astype(np.int32, copy=False),
            face_box=np.stack(self._box).astype(np.float32, copy=False),
            patches=np.stack(self._patches) if self.config.include_patches else None,
            meta=TensorMetadata(
                regions=self.region_names,
                frame_width=width,
                frame_height=height,
                source=self.config.source,
                sdk=sdk_version(),
            ),
            extra_metadata=extra,
        )
        validate(measurement)
        return measurement

    def close(self) -> None:
        """Release the landmark model (if we created it)."""
        if self._backend is not None and self._owns_backend:
            self._backend.close()
            self._backend = None


def process(
    frames: Iterable[Frame],
    config: PreprocessConfig | None = None,
    *,
    frame_size: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
    backend: LandmarkBackend | None = None,
    prefetch: bool = True,
) -> Measurement:
    """Preprocess a whole recording (replay) into a measurement.

    With `prefetch` the source is read in a background thread, so decoding (which releases the GIL in
    PyAV and OpenCV) overlaps with preprocessing on the second core. Progress events are
    ("preprocess", percent) while frames flow, when the source knows its length, then ("build", 100).
    """
    config = config or PreprocessConfig(source="video")
    if config.video_bits_per_pixel is None:
        bits_per_pixel = getattr(getattr(frames, "info", None), "bits_per_pixel", None)
        if isinstance(bits_per_pixel, float):
            config = dataclasses.replace(config, video_bits_per_pixel=bits_per_pixel)
    pre = Preprocessor(config, backend=backend, frame_size=frame_size)
    total = _expected_frames(frames)
    last_percent = -1.0
    try:
        for frame in _prefetched(frames) if prefetch else frames:
            pre.push(frame)
            if progress is not None and total:
                percent = min(99.0, math.floor(100.0 * pre.frames_seen / total))
                if percent > last_percent:
                    progress("preprocess", percent)
                    last_percent = percent
        if progress is not None:
            progress("preprocess", 100.0)
        measurement = pre.finish()
        if progress is not None:
            progress("build", 100.0)
        return measurement
    finally:
        pre.close()


def _expected_frames(frames: Iterable[Frame]) -> int | None:
    """Best guess of the frame count from the source's `info` (capture.FrameSource) or len()."""
    info = getattr(frames, "info", None)
    for name in ("frame_count", "n_frames"):
        value = getattr(info, name, None)
        if isinstance(value, int) and value > 0:
            return value
    duration_s, fps = getattr(info, "duration_s", None), getattr(info, "fps", None)
    if isinstance(duration_s, int | float) and isinstance(fps, int | float) and duration_s > 0 and fps > 0:
        return round(duration_s * fps)
    try:
        return len(frames)  # type: ignore[arg-type]
    except TypeError:
        return None


_DONE: Final = object()


def _prefetched(frames: Iterable[Frame], depth: int = 8) -> Iterator[Frame]:
    """Iterate `frames` from a background thread, re-raising its errors here."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        buffer.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="preprocess-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=1.0)
