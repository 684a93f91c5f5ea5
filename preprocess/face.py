"""Face landmarks behind one small interface; the only module that imports mediapipe.

Everything else in `preprocess` sees a `LandmarkBackend`: give it a BGR frame, get (468, 2) float32 pixel
coordinates in that frame (mediapipe FaceMesh topology) or None. Another model can be plugged in by
implementing the protocol and passing it to `Preprocessor(backend=...)`, as long as it returns the same
468-point topology (the region index constants in `preprocess.regions` refer to it).
"""

from __future__ import annotations

from typing import Final, Protocol

import cv2
import numpy as np

N_LANDMARKS: Final = 468
# FaceMesh internally works on a 192x192 face crop (after a 128x128 detector pass), so feeding it more
# than ~640 px buys nothing but a slower colour conversion and copy at 720p/1080p.
DEFAULT_MAX_INPUT_SIDE_PX: Final = 640


class LandmarkBackend(Protocol):
    """What the preprocessor needs from a face-landmark model."""

    def detect(self, image_bgr: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 landmark pixel coordinates (x, y) in `image_bgr`, or None when no face."""
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

    def _open(self) -> object:
        import mediapipe as mp

        return mp.solutions.face_mesh.FaceMesh(**self._options)

    def detect(self, image_bgr: np.ndarray) -> np.ndarray | None:
        height, width = image_bgr.shape[:2]
        scale = min(1.0, self._max_input_side_px / max(height, width))
        small = image_bgr
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        result = self._mesh.process(rgb)  # type: ignore[attr-defined]
        faces = result.multi_face_landmarks
        if not faces:
            return None
        # Landmarks are normalised to the input image, so scaling back to the full frame is exact.
        points = np.array([(p.x, p.y) for p in faces[0].landmark[:N_LANDMARKS]], dtype=np.float32)
        points *= np.array([width, height], dtype=np.float32)
        return points

    def reset(self) -> None:
        self.close()
        self._mesh = self._open()

    def close(self) -> None:
        self._mesh.close()  # type: ignore[attr-defined]


def default_backend() -> LandmarkBackend:
    """The landmark model used when none is given."""
    return MediaPipeFaceMesh()
