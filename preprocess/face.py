"""Face landmarks behind one small interface; the only module that imports mediapipe.

Everything else in `preprocess` sees a `LandmarkBackend`: give it a frame's `Pixels`, get landmark pixel
coordinates in that frame or None, and the `RegionSet` its topology defines. Another model is plugged in
by implementing the protocol (its landmarks, and a region set drawn from them) and passing it to
`Preprocessor(backend=...)`, or by adding it to `BACKENDS` so that `PreprocessConfig.landmarks` (and
`vitalcam.session.MeasureOptions.landmarks`) can name it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

# mediapipe's C++ (TFLite, absl/glog) logs INFO/WARNING lines straight to fd 2 ("Created TensorFlow Lite
# XNNPACK delegate", "inference_feedback_manager"), which garbles a CLI's progress output. These variables
# must be set before mediapipe loads; setdefault so a user debugging the model can still turn logs on.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

from preprocess.pixels import Pixels, landmark_input_size
from preprocess.regions import FACE_MESH_REGIONS, RegionSet

N_LANDMARKS: Final = 468
# FaceMesh internally works on a 192x192 face crop (after a 128x128 detector pass), so feeding it more
# than ~640 px buys nothing but a slower colour conversion and copy at 720p/1080p.
DEFAULT_MAX_INPUT_SIDE_PX: Final = 640


# Set once this process has run the landmark model on a face with fd 2 silenced: mediapipe prints a
# one-off warning (landmark_projection_calculator) the first time it projects landmarks.
_first_face_done = False


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Send fd 2 to /dev/null for the duration (C++ writes there directly, bypassing sys.stderr).

    The env variables above do not reach absl logging before `absl::InitializeLog()`, which mediapipe
    never calls, so redirecting the descriptor is the only switch. It is process-wide, so it is used only
    around the few calls known to log (model construction, its warm-up), never around every frame.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _warm_up_face_bgr() -> np.ndarray | None:
    """A real face photo shipped in an installed package (scikit-image's astronaut), or None.

    Read with OpenCV from the package directory rather than through `skimage.data`, whose import costs
    half a second.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    return cv2.imread(str(path)) if path.is_file() else None


# A NormalizedLandmarkList on the wire: field 1 (`landmark`) repeated, each a 15-byte message of three
# float fields x (tag 0x0d), y (0x15) and z (0x1d). Read as a numpy record, that is 17 bytes per point.
_LANDMARK_RECORD: Final = np.dtype(
    [("key", "u1"), ("size", "u1"), ("x_key", "u1"), ("x", "<f4"), ("y_key", "u1"), ("y", "<f4"),
     ("z_key", "u1"), ("z", "<f4")]
)  # fmt: skip


def landmark_xy(landmarks: Any) -> np.ndarray:
    """float32 [N, 2] normalised (x, y) of a mediapipe NormalizedLandmarkList, the same values as reading
    `p.x, p.y` point by point.

    Point by point costs 0.2 ms (936 protobuf attribute reads); serialising the list and reading the
    wire bytes as numpy records costs a twentieth of that. The wire layout is checked, not assumed: a
    list with other fields (visibility, presence) or an omitted coordinate takes the slow path.
    """
    wire = landmarks.SerializeToString()
    count = len(wire) // _LANDMARK_RECORD.itemsize
    if count and len(wire) == count * _LANDMARK_RECORD.itemsize:
        records = np.frombuffer(wire, _LANDMARK_RECORD)
        if (
            (records["key"] == 0x0A).all()
            and (records["size"] == 15).all()
            and (records["x_key"] == 0x0D).all()
            and (records["y_key"] == 0x15).all()
            and (records["z_key"] == 0x1D).all()
        ):
            return np.stack((records["x"], records["y"]), axis=1)
    return np.array([(p.x, p.y) for p in landmarks.landmark], dtype=np.float32).reshape(-1, 2)


class LandmarkBackend(Protocol):
    """What the preprocessor needs from a face-landmark model."""

    @property
    def regions(self) -> RegionSet:
        """The regions this model's landmarks define (names in tensor order, and their rasteriser)."""
        ...

    def detect(self, pixels: Pixels) -> np.ndarray | None:
        """float32 [N, 2] landmark pixel coordinates (x, y) in the frame, or None when no face."""
        ...

    def reset(self) -> None:
        """Forget tracking state (the next call searches the whole frame)."""
        ...

    def close(self) -> None:
        """Release model resources."""
        ...


class MediaPipeFaceMesh:
    """mediapipe 0.10.21 `solutions.face_mesh` (bundled model, tracking mode, no iris refinement).

    Chosen over the Tasks FaceLandmarker because its model ships inside the wheel (no download at run
    time) and it is about four times faster here. In tracking mode it skips the face detector while the
    previous landmarks still frame a face, which also works when we call it only every k-th frame.

    The detector sees the whole frame letterboxed to 128x128, so in a 16:9 frame a face at arm's length
    is only ~20 px there and scores below mediapipe's default 0.5 (measured: found in 1 of 12 frames of
    the 720p test video); 0.3 finds it in all of them, and the landmark model's own tracking confidence
    still rejects non-faces.
    """

    def __init__(
        self,
        *,
        max_input_side_px: int = DEFAULT_MAX_INPUT_SIDE_PX,
        min_detection_confidence: float = 0.3,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        self._max_input_side_px = max_input_side_px
        self._options = {
            "static_image_mode": False,
            "max_num_faces": 1,
            "refine_landmarks": False,
            "min_detection_confidence": min_detection_confidence,
            "min_tracking_confidence": min_tracking_confidence,
        }
        self._mesh = self._open()

    @property
    def regions(self) -> RegionSet:
        return FACE_MESH_REGIONS

    def _open(self) -> Any:
        """Build the graph with fd 2 silenced and run it once before un-silencing, so its log lines land
        in /dev/null: the model calculators open (and log) asynchronously after construction returns,
        and a first `process` waits for them. The first time in a process the warm-up image is a face,
        because the first landmark projection logs too; a blank image then clears the tracking state."""
        global _first_face_done
        with quiet_native_logs():
            import mediapipe as mp

            mesh = mp.solutions.face_mesh.FaceMesh(**self._options)
            face = None if _first_face_done else _warm_up_face_bgr()
            if face is not None:
                found = mesh.process(cv2.cvtColor(face, cv2.COLOR_BGR2RGB)).multi_face_landmarks
                _first_face_done = bool(found)
            mesh.process(np.zeros((64, 64, 3), np.uint8))
        return mesh

    def detect(self, pixels: Pixels) -> np.ndarray | None:
        """Landmarks in frame pixels, from a <= `max_input_side_px` copy of the whole frame (all the
        model can use, and cheap from I420: resized, then converted straight to the RGB it wants)."""
        width, height = pixels.width, pixels.height
        small_w, small_h = landmark_input_size(width, height, self._max_input_side_px)
        points = self.detect_rgb(pixels.small_bgr(small_w, small_h, rgb=True))
        if points is None or (small_w, small_h) == (width, height):
            return points
        return points * np.array([width / small_w, height / small_h], np.float32)

    def detect_bgr(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 landmark pixel coordinates in `image_bgr` (any size the model accepts)."""
        return self.detect_rgb(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))

    def detect_rgb(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """`detect_bgr` for an image already in RGB, the model's own order (no conversion here)."""
        height, width = image_rgb.shape[:2]
        quiet = not _first_face_done
        result = self._process_quietly(image_rgb) if quiet else self._mesh.process(image_rgb)
        faces = result.multi_face_landmarks
        if not faces:
            return None
        # Landmarks are normalised to the input image, so scaling back to the full frame is exact.
        points = landmark_xy(faces[0])[:N_LANDMARKS]
        points *= np.array([width, height], dtype=np.float32)
        return points

    def _process_quietly(self, rgb: np.ndarray) -> Any:
        """Fallback when no warm-up face was available: silence fd 2 until the first face is seen."""
        global _first_face_done
        with quiet_native_logs():
            result = self._mesh.process(rgb)
        _first_face_done = bool(result.multi_face_landmarks)
        return result

    def reset(self) -> None:
        self.close()
        self._mesh = self._open()

    def close(self) -> None:
        self._mesh.close()


# The face crop FaceMesh sees in `CroppedFaceMesh`: its side is CROP_FACE_RATIO times the face's larger
# side. It is taken at the scale of the <= 640 px whole-frame copy `MediaPipeFaceMesh` uses, on that
# copy's pixel grid, so the model sees the very pixels it would see in the whole frame; only a face
# smaller than CROP_MIN_FACE_PX at that scale is enlarged (up to CROP_MAX_ZOOM times), which is what lets
# the landmark model read a face 2 m from a webcam.
CROP_FACE_RATIO: Final = 2.0
CROP_MIN_FACE_PX: Final = 112
CROP_MAX_ZOOM: Final = 4.0


class CroppedFaceMesh:
    """FaceMesh on a crop around the face, found first by mediapipe's full-range face detector.

    Two things follow from cropping. Small faces are found: FaceMesh's own detector (short range) sees
    the whole frame letterboxed to 128x128 and stops at about 2 m from a webcam (a 110 px face in a 720p
    frame is 0 of 100 frames), while the full-range detector finds it and the crop enlarges it for the
    landmark model. And a landmark run costs less: mediapipe converts and resamples a 256-384 px crop
    rather than a 640 px frame, and the crop comes from the I420 planes resized before conversion.

    The crop follows the last landmarks (centred on the face, CROP_FACE_RATIO times its size), so that
    FaceMesh's own tracking, which keeps the previous face's place in its input, stays valid from one
    call to the next; the detector runs only when FaceMesh has lost the face.
    """

    def __init__(
        self,
        *,
        max_input_side_px: int = DEFAULT_MAX_INPUT_SIDE_PX,
        min_detection_confidence: float = 0.5,
    ) -> None:
        self._max_input_side_px = max_input_side_px
        self._mesh = MediaPipeFaceMesh(max_input_side_px=max_input_side_px)
        self._min_detection_confidence = min_detection_confidence
        self._detector = self._open_detector()
        self._roi: tuple[float, float, float] | None = None  # face centre x, y and crop side, frame px
        self.detector_runs = 0
        self.zoomed = False  # whether the last crop enlarged a face too small at the whole frame's scale

    @property
    def regions(self) -> RegionSet:
        return FACE_MESH_REGIONS

    def _open_detector(self) -> object:
        with quiet_native_logs():
            import mediapipe as mp

            detector = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self._min_detection_confidence
            )
            detector.process(np.zeros((64, 64, 3), np.uint8))
        return detector

    def detect(self, pixels: Pixels) -> np.ndarray | None:
        fresh = False
        if self._roi is None:
            self._roi, fresh = self._find(pixels), True
            if self._roi is None:
                return None
        points = self._landmarks_in(pixels, self._roi)
        if points is None and not fresh:
            # FaceMesh lost the face it was tracking: look for it again on this very frame.
            self._roi = self._find(pixels)
            points = self._landmarks_in(pixels, self._roi) if self._roi is not None else None
        self._roi = _roi_around(points) if points is not None else None
        return points

    def _find(self, pixels: Pixels) -> tuple[float, float, float] | None:
        """The most confident face of the full-range detector on a <= 640 px copy, as a crop ROI."""
        self.detector_runs += 1
        width, height = pixels.width, pixels.height
        small_w, small_h = landmark_input_size(width, height, self._max_input_side_px)
        rgb = pixels.small_bgr(small_w, small_h, rgb=True)
        detections = self._detector.process(rgb).detections  # type: ignore[attr-defined]
        if not detections:
            return None
        best = max(detections, key=lambda d: d.score[0])
        box = best.location_data.relative_bounding_box
        w_px, h_px = box.width * width, box.height * height
        cx, cy = (box.xmin * width + w_px / 2), (box.ymin * height + h_px / 2)
        return cx, cy, CROP_FACE_RATIO * max(w_px, h_px)

    def _landmarks_in(self, pixels: Pixels, roi: tuple[float, float, float]) -> np.ndarray | None:
        """FaceMesh on the ROI's crop (clamped to the frame), in frame pixels."""
        width, height = pixels.width, pixels.height
        cx, cy, side = roi
        small_w = landmark_input_size(width, height, self._max_input_side_px)[0]
        factor = width / small_w  # frame px per px of the whole-frame copy
        face_side = side / CROP_FACE_RATIO
        self.zoomed = face_side / factor < CROP_MIN_FACE_PX
        if not self.zoomed:
            # The whole-frame copy's scale: snap to its grid (and its chroma grid) when the factor is whole,
            # so the crop is exactly a block of that copy.
            grid = 2 * round(factor) if abs(factor - round(factor)) < 1e-6 else 2
            scale = 1.0 / factor
        else:
            grid, scale = 2, min(CROP_MAX_ZOOM, CROP_MIN_FACE_PX / max(face_side, 1.0))
        half = side / 2
        x0 = max(0, math.floor((cx - half) / grid) * grid)
        y0 = max(0, math.floor((cy - half) / grid) * grid)
        x1 = min(width // grid * grid, math.ceil((cx + half) / grid) * grid)
        y1 = min(height // grid * grid, math.ceil((cy + half) / grid) * grid)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        out_w = max(2, round((x1 - x0) * scale) & ~1)
        out_h = max(2, round((y1 - y0) * scale) & ~1)
        crop = pixels.resized_crop(x0, y0, x1, y1, out_w, out_h, rgb=True)
        points = self._mesh.detect_rgb(crop)
        if points is None:
            return None
        return points * np.array([(x1 - x0) / out_w, (y1 - y0) / out_h], np.float32) + np.array(
            [x0, y0], np.float32
        )

    def reset(self) -> None:
        self._roi = None
        self._mesh.reset()

    def close(self) -> None:
        self._mesh.close()
        self._detector.close()  # type: ignore[attr-defined]


def _roi_around(points: np.ndarray) -> tuple[float, float, float]:
    """Centre and crop side around a landmark set (its bounding box, CROP_FACE_RATIO times its size)."""
    x_min, y_min = points.min(axis=0)
    x_max, y_max = points.max(axis=0)
    side = CROP_FACE_RATIO * float(max(x_max - x_min, y_max - y_min))
    return float(x_min + x_max) / 2, float(y_min + y_max) / 2, side


class FaceMeshNearAndFar:
    """FaceMesh on the whole frame, and on an enlarged crop only when the face is too far for it.

    Wherever FaceMesh finds the face on its own this is `MediaPipeFaceMesh` unchanged. Cropping always
    (`CroppedFaceMesh`) is cheaper per run but not neutral: on the real UBFC-rPPG videos it raised the
    30 s window MAE from 0.3 to 0.7 bpm even with the crop taken from the very pixels of the whole-frame
    copy (FaceMesh tracks differently on a moving crop). So the full-range detector and the crop come in
    only when FaceMesh finds no face, and stay while the face is small; when it is lost or grows, the
    whole frame is tried first again.
    """

    def __init__(self, *, max_input_side_px: int = DEFAULT_MAX_INPUT_SIDE_PX) -> None:
        self._max_input_side_px = max_input_side_px
        self._frame = MediaPipeFaceMesh(max_input_side_px=max_input_side_px)
        self._crop: CroppedFaceMesh | None = None  # built on first need: most videos never need it
        self._far = False

    @property
    def regions(self) -> RegionSet:
        return FACE_MESH_REGIONS

    def detect(self, pixels: Pixels) -> np.ndarray | None:
        if not self._far:
            points = self._frame.detect(pixels)
            if points is not None:
                return points
        if self._crop is None:
            self._crop = CroppedFaceMesh(max_input_side_px=self._max_input_side_px)
        points = self._crop.detect(pixels)
        self._far = points is not None and self._crop.zoomed
        return points

    def reset(self) -> None:
        self._far = False
        self._frame.reset()
        if self._crop is not None:
            self._crop.reset()

    def close(self) -> None:
        self._frame.close()
        if self._crop is not None:
            self._crop.close()


# Landmark backends by the name `PreprocessConfig.landmarks` uses. "facemesh" (the default) is FaceMesh on
# the whole frame that also finds faces 2-4 m away; "facemesh-frame" is the whole frame only (FaceMesh's
# own detector, to about 2 m); "facemesh-crop" always works on a face crop (cheaper per landmark run).
BACKENDS: Final[dict[str, Callable[[], LandmarkBackend]]] = {
    "facemesh": FaceMeshNearAndFar,
    "facemesh-frame": MediaPipeFaceMesh,
    "facemesh-crop": CroppedFaceMesh,
}
DEFAULT_BACKEND: Final = "facemesh"


def backend_named(name: str) -> LandmarkBackend:
    """A new instance of the named landmark backend (one of `BACKENDS`)."""
    if name not in BACKENDS:
        raise ValueError(f"landmarks must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]()


def default_backend() -> LandmarkBackend:
    """The landmark model used when none is given."""
    return backend_named(DEFAULT_BACKEND)
