"""The preprocessor: frames in, per-frame features out (live), and a `Measurement` at the end.

`Preprocessor` is a short recipe over small parts with one job each: `placement` (where the regions are:
landmark cadence, anchoring, smoothing), the `extract` kernel (per-region skin sums), `patches`,
`recording` (the tensor's rows and the usability verdict), `monitor` (quality and warnings) and `timing`
(seconds per stage, which the benchmark reads from `stage_seconds`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import cv2
import numpy as np

from capture.frame import Frame
from contract import __version__
from contract.tensor import (
    FULL_FRAME_REGIONS,
    PATCH_SIZE_PX,
    VIDEO_BITS_PER_PIXEL_KEY,
    Measurement,
    Source,
)
from preprocess import extract, patches, pulse
from preprocess.face import DEFAULT_BACKEND, LandmarkBackend, backend_named
from preprocess.monitor import QualityMonitor
from preprocess.pixels import Pixels, pixels_of
from preprocess.placement import CadenceConfig, FacePlacement, FullFramePlacement, Placement, Placer
from preprocess.quality import QualityState, QualityThresholds, QualityWarning
from preprocess.recording import TraceRecorder
from preprocess.regions import FACE_MESH_REGIONS
from preprocess.timing import StageTimer

RegionMode = Literal["face", "full-frame"]
ProgressCallback = Callable[[str, float], None]
STAGES: Final = ("landmarks", "tracking", "masks", "extraction", "patch", "quality")
# The cadence's defaults live in `CadenceConfig`; PreprocessConfig repeats its fields (flat, for callers).
_CADENCE: Final = CadenceConfig()
_CADENCE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(CadenceConfig))
# The region the live pulse preview reads: the whole face (else the first region: the frame in full-frame
# mode, or whatever a custom backend's region set lists first).
PREVIEW_REGION: Final = "face"


def sdk_version() -> str:
    """`vitalcam/<version>` for the tensor metadata."""
    return f"vitalcam/{__version__}"


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """How to preprocess. The defaults suit a webcam or a phone video of a face at arm's length."""

    regions: RegionMode = "face"
    # Landmark backend by name (`preprocess.face.BACKENDS`); its region set names the tensor's regions.
    landmarks: str = DEFAULT_BACKEND
    include_patches: bool = True
    source: Source = "camera"
    # Landmark cadence: run landmarks at least every `landmark_max_interval_frames` frames; after each
    # run that tracking predicted within `cadence_tolerance_widths` face widths the interval doubles,
    # otherwise it halves. Per-frame tracked motion above `redetect_motion_widths` forces a run at once.
    # Set landmark_max_interval_frames=1 for landmarks on every frame (no tracking).
    landmark_min_interval_frames: int = _CADENCE.landmark_min_interval_frames
    landmark_max_interval_frames: int = _CADENCE.landmark_max_interval_frames
    cadence_tolerance_widths: float = _CADENCE.cadence_tolerance_widths
    redetect_motion_widths: float = _CADENCE.redetect_motion_widths
    # Landmark residual after translation that redraws masks.
    reshape_tolerance_widths: float = _CADENCE.reshape_tolerance_widths
    # One Euro filter on the face translation that places the masks (see `preprocess.smoothing`): the
    # cut-off is `position_min_cutoff_hz` at rest, below the pulse band so landmark jitter stays out of
    # it, and rises by `position_beta_hz_per_width_s` per face width per second of head speed so real
    # motion is followed without lag. A landmark reading further than `redetect_motion_widths` from where
    # the face was expected restarts the filter there. position_min_cutoff_hz=inf turns smoothing off.
    position_min_cutoff_hz: float = _CADENCE.position_min_cutoff_hz
    position_beta_hz_per_width_s: float = _CADENCE.position_beta_hz_per_width_s
    patch_scale: float = 1.2  # patch side / larger face box side, before snapping to a multiple of 72 px
    min_face_share: float = 0.7  # of frames, else QualityTooLow(NO_FACE)
    min_usable_s: float = 15.0  # seconds of frames with skin pixels, else QualityTooLow(TOO_SHORT)
    preview_window_s: float = 10.0
    preview_every_frames: int = 15  # 0: no pulse preview (replays)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    # Compressed bits per pixel of the video being replayed (capture's SourceInfo.bits_per_pixel), sent
    # in the tensor's metadata so the backend can say when compression limits the reading.
    video_bits_per_pixel: float | None = None

    def cadence(self) -> CadenceConfig:
        """The landmark cadence and smoothing settings, for `FacePlacement`."""
        return CadenceConfig(**{name: getattr(self, name) for name in _CADENCE_FIELDS})


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """What the live preview needs about one frame."""

    t_s: float
    index: int
    face_box_px: tuple[int, int, int, int] | None  # x, y, w, h in frame pixels
    polygons: list[np.ndarray]  # int32 [N, 2] outlines of the regions (FaceMesh: forehead, cheeks, oval)
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
        self._owns_backend = backend is None
        if backend is None and self._face_mode:
            backend = backend_named(self.config.landmarks)
        self._backend = backend
        self._timer = StageTimer(STAGES)
        self.stage_seconds = self._timer.seconds
        self._placer: Placer
        if self._face_mode:
            self._face_placement: FacePlacement | None = FacePlacement(
                backend, self.config.cadence(), self._timer
            )
            self._placer = self._face_placement
            self.region_names = backend.regions.names if backend is not None else FACE_MESH_REGIONS.names
        else:
            self._face_placement = None
            self._placer = FullFramePlacement()
            self.region_names = FULL_FRAME_REGIONS
        names = self.region_names
        self._preview_region = names.index(PREVIEW_REGION) if PREVIEW_REGION in names else 0
        self._recorder = TraceRecorder(self.region_names, self.config.include_patches)
        self._monitor = QualityMonitor(self.config.thresholds, face_mode=self._face_mode)
        self.frame_size: tuple[int, int] | None = frame_size
        self.frames_seen = 0
        self.frames_dropped = 0  # non-increasing timestamps
        self._preview: tuple[np.ndarray, float] | None = None
        self._last: FrameFeatures | None = None
        extract.warm_up()

    @property
    def landmark_runs(self) -> int:
        return self._face_placement.landmark_runs if self._face_placement is not None else 0

    @property
    def mask_redraws(self) -> int:
        return self._face_placement.mask_redraws if self._face_placement is not None else 0

    @property
    def warning_counts(self) -> dict[str, int]:
        return self._monitor.warning_counts

    # -- live ---------------------------------------------------------------------------------------

    def push(self, frame: Frame) -> FrameFeatures:
        """Process one frame and return what the preview shows for it."""
        taken = self._take(frame)
        if taken is not None:
            pixels, placement, stats = taken
            with self._timer.stage("quality"):
                self._last = self._features(frame, pixels, placement, stats)
        if self._last is None:  # a refused timestamp after frames given to `add`
            raise ValueError("push() on a Preprocessor that add() was used on: use one or the other")
        return self._last

    def add(self, frame: Frame) -> None:
        """Process one frame of a replay: the same tensor rows, quality checks and warning counts as
        `push`, without building the preview's `FrameFeatures` that nobody looks at."""
        taken = self._take(frame)
        if taken is not None:
            pixels, placement, stats = taken
            with self._timer.stage("quality"):
                self._monitor.observe(pixels, placement.box_px, stats)

    def _take(self, frame: Frame) -> tuple[Pixels, Placement, np.ndarray | None] | None:
        """Place, extract and record one frame; None when its timestamp is refused."""
        pixels = pixels_of(frame)
        self._check_size(pixels)
        if not self._accept(frame.t_s):
            return None
        self.frames_seen += 1
        placement = self._placer.update(pixels, frame.t_s)
        with self._timer.stage("extraction"):
            sums, counts, stats = self._sums(pixels, placement)
        with self._timer.stage("patch"):
            patch = self._patch(pixels, placement)
        self._recorder.record(frame.t_s, sums, counts, self._box_norm(pixels, placement), patch)
        return pixels, placement, stats

    def _check_size(self, pixels: Pixels) -> None:
        size = (pixels.width, pixels.height)
        if self.frame_size is None:
            self.frame_size = size
        elif self.frame_size != size:
            raise ValueError(f"frame size changed from {self.frame_size} to {size}")

    def _accept(self, t_s: float) -> bool:
        """False for a repeated or reordered timestamp, which would break the tensor's increasing t_s."""
        last_t_s = self._recorder.last_t_s()
        if last_t_s is not None and t_s <= last_t_s:
            self.frames_dropped += 1
            return False
        if last_t_s is not None:
            self._monitor.frame_interval(t_s - last_t_s)
        return True

    def _sums(self, pixels: Pixels, placement: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        n_regions = len(self.region_names)
        mask = placement.mask
        if mask is None:
            return np.zeros((n_regions, 3), np.int64), np.zeros(n_regions, np.int64), None
        fx_q8, fy_q8 = placement.fraction_q8
        return extract.region_sums_in(pixels, mask.labels, mask.x0, mask.y0, fx_q8, fy_q8, n_regions)

    def _patch(self, pixels: Pixels, placement: Placement) -> np.ndarray | None:
        if not self.config.include_patches:
            return None
        if not self._face_mode:
            return patches.full_frame_patch(pixels.to_bgr())
        if placement.box_px is None:
            return np.zeros((PATCH_SIZE_PX, PATCH_SIZE_PX, 3), np.uint8)
        x0, y0, side = patches.patch_box(
            placement.box_px, pixels.width, pixels.height, self.config.patch_scale
        )
        return patches.patch_of(pixels, x0, y0, side)

    def _box_norm(self, pixels: Pixels, placement: Placement) -> np.ndarray:
        if not self._face_mode:
            return np.array([0.0, 0.0, 1.0, 1.0], np.float32)
        if placement.box_px is None:
            return np.full(4, np.nan, np.float32)
        x, y, w, h = placement.box_px
        width, height = pixels.width, pixels.height
        return np.array([x / width, y / height, w / width, h / height], np.float32)

    def _features(
        self, frame: Frame, pixels: Pixels, placement: Placement, stats: np.ndarray | None
    ) -> FrameFeatures:
        state, warnings = self._monitor.observe(pixels, placement.box_px, stats)
        every = self.config.preview_every_frames
        if every and self.frames_seen % every == 0:
            self._preview = self._pulse_preview()
        face = self._face_mode and placement.box_px is not None
        mask = placement.mask
        box_px = placement.box_px
        return FrameFeatures(
            t_s=frame.t_s,
            index=frame.index,
            face_box_px=(round(box_px[0]), round(box_px[1]), round(box_px[2]), round(box_px[3]))
            if face and box_px is not None
            else None,
            polygons=list(mask.polygons) if face and mask is not None else [],
            quality=state,
            warnings=warnings,
            pulse_preview=self._preview[0] if self._preview else None,
            pulse_bpm_preview=self._preview[1] if self._preview else None,
            landmarks_ran=placement.landmarks_ran,
        )

    def _pulse_preview(self) -> tuple[np.ndarray, float] | None:
        """POS over the last `preview_window_s` of the whole-face (or frame) trace."""
        t_s, rgb = self._recorder.recent(self._preview_region, self.config.preview_window_s)
        if t_s.shape[0] == 0:
            return None
        present = np.isfinite(rgb).all(axis=1)
        if present.mean() < 0.8:
            return None
        return pulse.preview(t_s[present], rgb[present])

    # -- end of measurement ---------------------------------------------------------------------------

    def finish(self) -> Measurement:
        """The measurement tensor, or QualityTooLow when there is not enough usable data in it."""
        extra = {}
        if self.config.video_bits_per_pixel is not None:
            extra[VIDEO_BITS_PER_PIXEL_KEY] = f"{self.config.video_bits_per_pixel:.5f}"
        return self._recorder.finish(
            face_mode=self._face_mode,
            min_face_share=self.config.min_face_share,
            min_usable_s=self.config.min_usable_s,
            frame_size=self.frame_size or (0, 0),
            source=self.config.source,
            sdk=sdk_version(),
            extra_metadata=extra,
        )

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
    prefetch: bool | Literal["thread", "process"] = True,
) -> Measurement:
    """Preprocess a whole recording (replay) into a measurement.

    With `prefetch` (True or "thread") the source is read in a background thread beside preprocessing
    when this process may run on two cores or more (`os.sched_getaffinity`); on one core a second
    thread only adds hand-offs (measured 414 against 444 fps at 720p, same run), so the source is read
    in line there. A video file's decoding runs in FFmpeg's own frame threads, which need no GIL,
    while the Python thread only hands frames over. `prefetch="process"` decodes a video file in a
    child process instead (`VideoFileSource.decoded_elsewhere`), which has a GIL of its own but must
    copy every frame (0.24 ms at 720p); it measured slower than the thread (448 against 630 fps at 720p,
    same run), so it is opt-in. False decodes in line. OpenCV's own worker threads are turned off for
    the duration: every call here works on a face-sized crop, where waking them costs more than they
    save (two cores: 568 -> 630 fps at 720p). Progress events are ("preprocess", percent) while frames
    flow, when the source knows its length, then ("build", 100).
    """
    config = config or PreprocessConfig(source="video")
    if config.video_bits_per_pixel is None:
        bits_per_pixel = getattr(getattr(frames, "info", None), "bits_per_pixel", None)
        if isinstance(bits_per_pixel, float):
            config = dataclasses.replace(config, video_bits_per_pixel=bits_per_pixel)
    total = _expected_frames(frames)
    if prefetch in (True, "thread") and len(os.sched_getaffinity(0)) < 2:
        prefetch = False
    if not prefetch:
        source: Iterator[Frame] = iter(frames)
    else:
        source = _decoded_beside(frames) if prefetch == "process" else _prefetched(frames)
    try:
        # Nobody watches a replay's features: no pulse preview (a POS over 10 s every 15 frames).
        pre = Preprocessor(
            dataclasses.replace(config, preview_every_frames=0), backend=backend, frame_size=frame_size
        )
        try:
            with _opencv_single_threaded():
                last_percent = -1.0
                for frame in source:
                    pre.add(frame)
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
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


@contextlib.contextmanager
def _opencv_single_threaded() -> Iterator[None]:
    """OpenCV without its worker threads for the block, restored after (it is a process-wide setting)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _decoded_beside(frames: Iterable[Frame]) -> Iterator[Frame]:
    """The frames decoded on another core: by the source's own child process when it has one."""
    elsewhere = getattr(frames, "decoded_elsewhere", None)
    if callable(elsewhere):
        return iter(elsewhere())
    return _prefetched(frames)


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
