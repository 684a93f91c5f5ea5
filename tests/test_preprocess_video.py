"""The preprocessor on whole rendered videos: small faces are found, and no quality measure depends on the
resolution (the same content at four times the size must look neither shakier nor smaller)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from capture import VideoFileSource
from capture.synthetic import render_preset
from preprocess import PreprocessConfig, Preprocessor
from preprocess.quality import FACE_TOO_SMALL, MESSAGES

pytestmark = pytest.mark.slow


def run(path: Path, **config: object) -> tuple[Preprocessor, list, np.ndarray]:
    """Push every frame; (preprocessor, per-frame features, face boxes in frame px [T, 4] with NaN rows)."""
    pre = Preprocessor(PreprocessConfig(source="video", min_usable_s=1.0, **config))  # type: ignore[arg-type]
    features = []
    with VideoFileSource(path) as source:
        for frame in source:
            features.append(pre.push(frame))
    boxes = np.array([f.face_box_px if f.face_box_px is not None else (np.nan,) * 4 for f in features], float)
    pre.close()
    return pre, features, boxes


def in_band_motion_widths(boxes: np.ndarray, fps: float) -> float:
    """In-band (0.7-3.5 Hz) std of the face centre and size, in face widths: the motion the engine
    penalises (server.inference.pulse.motion_attenuation measures the same on the tensor's face box)."""
    width = float(np.nanmedian(boxes[:, 2]))
    centre = np.stack([boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2, boxes[:, 2]]) / width
    centre = centre[:, np.isfinite(centre).all(axis=0)]
    spectrum = np.fft.rfft(centre - centre.mean(axis=1, keepdims=True), axis=1)
    freqs = np.fft.rfftfreq(centre.shape[1], 1.0 / fps)
    spectrum[:, (freqs < 0.7) | (freqs > 3.5)] = 0
    band = np.fft.irfft(spectrum, centre.shape[1], axis=1)
    return float(np.sqrt(np.sum(np.var(band, axis=1))))


@pytest.fixture(scope="module")
def far_face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 110 px face in a 1280x720 webcam stream (about 2 m from the camera), 6 s."""
    path = tmp_path_factory.mktemp("far") / "far.mp4"
    render_preset(path, "far", duration_s=6.0)
    return path


def test_a_face_two_metres_away_is_found_and_told_to_come_closer(far_face_video):
    _, features, boxes = run(far_face_video)
    found = np.isfinite(boxes[:, 0]).mean()
    assert found >= 0.95
    assert 90 <= np.nanmedian(boxes[:, 3]) <= 140  # the face really is small: about 110 px tall
    hints = {w.code for f in features for w in f.warnings}
    assert FACE_TOO_SMALL in hints
    assert "move closer" in MESSAGES[FACE_TOO_SMALL]


def test_facemesh_on_the_whole_frame_misses_that_face(far_face_video):
    """Why the default backend crops: FaceMesh's own short-range detector stops at about 2 m."""
    _, _, boxes = run(far_face_video, landmarks="facemesh-frame")
    assert np.isfinite(boxes[:, 0]).mean() < 0.2


@pytest.fixture(scope="module")
def same_content_two_sizes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 6 s 640x480 webcam render, and the same frames upscaled 4x to 2560x1920 (near-lossless)."""
    folder = tmp_path_factory.mktemp("sizes")
    small, large = folder / "small.mp4", folder / "large.mp4"
    render_preset(small, "webcam", duration_s=6.0)
    with av.open(str(small)) as source, av.open(str(large), "w") as target:
        stream = target.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 2560, 1920, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast"}
        for frame in source.decode(video=0):
            image = cv2.resize(frame.to_ndarray(format="bgr24"), (2560, 1920), interpolation=cv2.INTER_CUBIC)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    return small, large


def test_quality_does_not_depend_on_the_resolution(same_content_two_sizes):
    small, large = same_content_two_sizes
    _, small_features, small_boxes = run(small)
    _, large_features, large_boxes = run(large)
    assert np.isfinite(small_boxes[:, 0]).mean() >= 0.95 and np.isfinite(large_boxes[:, 0]).mean() >= 0.95
    small_motion = in_band_motion_widths(small_boxes, 30.0)
    large_motion = in_band_motion_widths(large_boxes, 30.0)
    assert large_motion < 2.0 * small_motion + 0.001, (small_motion, large_motion)
    assert small_motion < 2.0 * large_motion + 0.001, (small_motion, large_motion)

    def mean_state(features: list, name: str) -> float:
        return float(np.mean([getattr(f.quality, name) for f in features[30:]]))

    for name, tolerance in (
        ("brightness_luma", 3.0),  # levels of 255: the mask edge is a smaller share at 4x
        ("clipped_share", 0.01),
        ("face_area_share", 0.005),
        ("face_speed_widths_per_s", 0.05),
    ):
        assert abs(mean_state(small_features, name) - mean_state(large_features, name)) <= tolerance, name
    small_warnings = {w.code for f in small_features[30:] for w in f.warnings}
    large_warnings = {w.code for f in large_features[30:] for w in f.warnings}
    assert small_warnings == large_warnings
