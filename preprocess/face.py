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
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Protocol

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
def _quiet_fd2() -> Iterator[None]:
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

    def _open(self) -> object:
        """Build the graph with fd 2 silenced and run it once before un-silencing, so its log lines land
        in /dev/null: the model calculators open (and log) asynchronously after construction returns,
        and a first `process` waits for them. The first time in a process the warm-up image is a face,
        because the first landmark projection logs too; a blank image then clears the tracking state."""
        global _first_face_done
        with _quiet_fd2():
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
        model can use, and cheap from I420)."""
        width, height = pixels.width, pixels.height
        small_w, small_h = landmark_input_size(width, height, self._max_input_side_px)
        points = self.detect_bgr(pixels.small_bgr(small_w, small_h))
        if points is None or (small_w, small_h) == (width, height):
            return points
        return points * np.array([width / small_w, height / small_h], np.float32)

    def detect_bgr(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 landmark pixel coordinates in `image_bgr` (any size the model accepts)."""
        height, width = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        quiet = not _first_face_done
        result = self._process_quietly(rgb) if quiet else self._mesh.process(rgb)  # type: ignore[attr-defined]
        faces = result.multi_face_landmarks
        if not faces:
            return None
        # Landmarks are normalised to the input image, so scaling back to the full frame is exact.
        points = np.array([(p.x, p.y) for p in faces[0].landmark[:N_LANDMARKS]], dtype=np.float32)
        points *= np.array([width, height], dtype=np.float32)
        return points

    def _process_quietly(self, rgb: np.ndarray) -> object:
        """Fallback when no warm-up face was available: silence fd 2 until the first face is seen."""
        global _first_face_done
        with _quiet_fd2():
            result = self._mesh.process(rgb)  # type: ignore[attr-defined]
        _first_face_done = bool(result.multi_face_landmarks)
        return result

    def reset(self) -> None:
        self.close()
        self._mesh = self._open()

    def close(self) -> None:
        self._mesh.close()  # type: ignore[attr-defined]


# Landmark backends by the name `PreprocessConfig.landmarks` uses.
BACKENDS: Final[dict[str, Callable[[], LandmarkBackend]]] = {
    "facemesh": MediaPipeFaceMesh,
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
