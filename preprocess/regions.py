"""Region polygons from FaceMesh landmarks and the label mask the extraction kernel reads.

All landmark indices live here, once. "Left" and "right" are the subject's own sides (mediapipe's
convention), so the subject's left cheek appears on the right of a non-mirrored image.

Regions overlap (the face region contains the forehead and cheeks), so the label mask is a bit mask:
bit r set means the pixel belongs to region r of the backend's `RegionSet` (`FACE_MESH_REGIONS` for
FaceMesh, whose names are `contract.tensor.FACE_REGIONS`). The mask's integer type is sized to the region
count (`label_dtype`): uint8 holds 8 regions, uint16 the 16 the tensor format allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

from contract.tensor import FACE_REGIONS, FULL_FRAME_REGIONS, MAX_REGIONS

# Forehead: from the top of the face oval down to the upper edge of both eyebrows (skin rule drops hair).
FOREHEAD: Final = (
    10, 338, 297, 332, 284, 300, 293, 334, 296, 336, 9, 107, 66, 105, 63, 70, 54, 103, 67, 109,
)  # fmt: skip
# Subject's left cheek: below the left eye, between the nose side and the jaw, above the mouth corner.
LEFT_CHEEK: Final = (345, 346, 347, 348, 329, 371, 423, 426, 427, 411, 376, 352)
# Subject's right cheek: mirror image of LEFT_CHEEK.
RIGHT_CHEEK: Final = (116, 117, 118, 119, 100, 142, 203, 206, 207, 187, 147, 123)
# Face oval: the outline of the face from the top of the forehead around the jaw.
FACE_OVAL: Final = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
# Non-skin areas cut out of the face oval: eyes (lid contours), eyebrows and the outer lip line.
LEFT_EYE: Final = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYE: Final = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_BROW: Final = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
RIGHT_BROW: Final = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
LIPS: Final = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
FACE_HOLES: Final = (LEFT_EYE, RIGHT_EYE, LEFT_BROW, RIGHT_BROW, LIPS)

# Region bit order follows FACE_REGIONS: forehead, left_cheek, right_cheek, face, face_left, face_right.
REGION_POLYGONS: Final = (FOREHEAD, LEFT_CHEEK, RIGHT_CHEEK)
assert FACE_REGIONS == ("forehead", "left_cheek", "right_cheek", "face", "face_left", "face_right")
FACE_BIT: Final = 1 << 3
# The face region split in two along the facial midline (top of the forehead to the chin). The halves
# share no pixel and so no compression block: their noise is independent while their pulse is the same,
# which makes their agreement the engine's split-half test of whether a peak is a pulse.
MIDLINE: Final = (10, 152)
FACE_LEFT_BIT: Final = 1 << 4
FACE_RIGHT_BIT: Final = 1 << 5


@dataclass(frozen=True, slots=True)
class RegionMask:
    """Region labels rasterised once per landmark update, placed in the frame at (x0, y0).

    `labels` covers the face box (clipped to the frame when it was drawn); moving the mask with the
    tracked face only changes (x0, y0), so nothing is redrawn between landmark runs.
    """

    labels: np.ndarray  # uint8 or uint16 [h, w] bit mask (see `label_dtype`)
    x0: int
    y0: int
    drawn_polygons: tuple[np.ndarray, ...]  # int32 [N, 2] frame coordinates at the time of drawing
    moved_px: tuple[int, int] = (0, 0)  # whole-pixel translation since drawing

    @property
    def polygons(self) -> tuple[np.ndarray, ...]:
        """The region outlines where the mask is now, in frame pixels (for the preview).

        Shifted only when asked for: the mask moves on most frames, and a replay never draws them.
        """
        if self.moved_px == (0, 0):
            return self.drawn_polygons
        shift = np.array(self.moved_px, dtype=np.int32)
        return tuple(p + shift for p in self.drawn_polygons)

    def moved(self, dx_px: int, dy_px: int) -> RegionMask:
        """The same mask translated by whole pixels (its polygons follow)."""
        total = (self.moved_px[0] + dx_px, self.moved_px[1] + dy_px)
        return RegionMask(self.labels, self.x0 + dx_px, self.y0 + dy_px, self.drawn_polygons, total)


def face_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of the face oval's bounding box."""
    oval = landmarks[list(FACE_OVAL)]
    x_min, y_min = oval.min(axis=0)
    x_max, y_max = oval.max(axis=0)
    return float(x_min), float(y_min), float(x_max - x_min), float(y_max - y_min)


def region_polygons(landmarks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Integer pixel polygons: forehead, left cheek, right cheek, face oval, then the face holes."""
    return tuple(
        np.round(landmarks[list(idx)]).astype(np.int32) for idx in (*REGION_POLYGONS, FACE_OVAL, *FACE_HOLES)
    )


def label_dtype(n_regions: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type with one bit per region (uint8 up to 8, uint16 up to 16)."""
    if not 1 <= n_regions <= MAX_REGIONS:
        raise ValueError(f"a region set has 1 to {MAX_REGIONS} regions, got {n_regions}")
    return np.uint8 if n_regions <= 8 else np.uint16


Rasteriser = Callable[[np.ndarray, int, int], "RegionMask | None"]


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of all the landmarks' bounding box (a topology without a face outline)."""
    x_min, y_min = landmarks.min(axis=0)
    x_max, y_max = landmarks.max(axis=0)
    return float(x_min), float(y_min), float(x_max - x_min), float(y_max - y_min)


@dataclass(frozen=True, slots=True)
class RegionSet:
    """What a landmark topology means to the pipeline: its regions (names in the tensor's order and how to
    draw them), the face box, and the points that move with the head (for optical-flow tracking).

    It travels with the landmark backend (`LandmarkBackend.regions`), because all three are landmark
    indices and mean nothing for another model's points. `rasterise(landmarks, width, height)` returns
    the bit mask with bit r for `names[r]`, in `label_dtype(len(names))`. `track_points` None tracks
    every landmark.
    """

    names: tuple[str, ...]
    rasterise: Rasteriser
    face_box: Callable[[np.ndarray], tuple[float, float, float, float]] = landmark_box
    track_points: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        label_dtype(len(self.names))  # validates the count


def rasterise(landmarks: np.ndarray, frame_width: int, frame_height: int) -> RegionMask | None:
    """Draw the region bit mask over the face oval's box, clipped to the frame; None if none of it is inside.

    cv2.fillPoly clips to the canvas, so regions partly outside the frame keep their visible part.
    """
    polygons = region_polygons(landmarks)
    oval = polygons[len(REGION_POLYGONS)]
    x0 = max(0, int(oval[:, 0].min()))
    y0 = max(0, int(oval[:, 1].min()))
    x1 = min(frame_width, int(oval[:, 0].max()) + 1)
    y1 = min(frame_height, int(oval[:, 1].max()) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    origin = np.array([x0, y0], dtype=np.int32)
    local = [p - origin for p in polygons]
    dtype = label_dtype(len(FACE_REGIONS))
    face = np.zeros((y1 - y0, x1 - x0), dtype)
    cv2.fillPoly(face, [local[len(REGION_POLYGONS)]], (FACE_BIT,))
    cv2.fillPoly(face, local[len(REGION_POLYGONS) + 1 :], (0,))
    labels = face | _halves(face, landmarks[list(MIDLINE)] - origin)
    for bit, poly in enumerate(local[: len(REGION_POLYGONS)]):
        plane = np.zeros_like(face)
        cv2.fillPoly(plane, [poly], (1 << bit,))
        labels |= plane
    preview = (*polygons[: len(REGION_POLYGONS) + 1],)
    return RegionMask(labels, x0, y0, preview)


def _halves(face: np.ndarray, midline: np.ndarray) -> np.ndarray:
    """FACE_LEFT_BIT / FACE_RIGHT_BIT over the face pixels, split by the line through `midline` [2, 2].

    The subject's left is the image's right (non-mirrored): the side where the cross product of the
    midline direction (top to chin) and the pixel's offset is negative.
    """
    (x0, y0), (x1, y1) = midline
    ys, xs = np.mgrid[0 : face.shape[0], 0 : face.shape[1]]
    cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
    half = np.where(cross < 0, FACE_LEFT_BIT, FACE_RIGHT_BIT).astype(face.dtype)
    return np.where(face != 0, half, 0).astype(face.dtype)


# Points that move with the head rather than with expressions: forehead centre and sides, nose bridge
# and tip, inner and outer eye corners, cheekbones, chin.
TRACK_POINTS: Final = (10, 151, 9, 8, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 116, 345, 152, 234, 454, 199)
# FaceMesh's 468-point topology: the regions of `contract.tensor.FACE_REGIONS`.
FACE_MESH_REGIONS: Final = RegionSet(FACE_REGIONS, rasterise, face_box, TRACK_POINTS)


def full_frame_mask(frame_width: int, frame_height: int) -> RegionMask:
    """One region covering the whole frame (full-frame mode, `contract.tensor.FULL_FRAME_REGIONS`)."""
    labels = np.ones((frame_height, frame_width), label_dtype(len(FULL_FRAME_REGIONS)))
    outline = np.array(
        [[0, 0], [frame_width - 1, 0], [frame_width - 1, frame_height - 1], [0, frame_height - 1]], np.int32
    )
    return RegionMask(labels, 0, 0, (outline,))
