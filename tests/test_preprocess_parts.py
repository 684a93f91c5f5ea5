"""The preprocessor's parts on their own: stage timer, region sets and label masks, I420 crops and patches,
the tracker's whole-factor shrink, and a landmark backend that brings its own regions."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from capture.frame import Frame
from capture.yuv import I420Planes, YuvFrame, shrink
from contract.tensor import MAX_REGIONS
from preprocess import PreprocessConfig, Preprocessor, extract, patches, process, tracking
from preprocess.face import BACKENDS, backend_named, landmark_xy
from preprocess.pixels import BgrPixels
from preprocess.regions import RegionMask, RegionSet, label_dtype
from preprocess.timing import StageTimer
from preprocess.tracking import TRACK_WIDTH_PX, FaceTracker


def random_planes(rng: np.random.Generator, width: int, height: int) -> I420Planes:
    """Smooth random I420 content (skin-ish chroma), so that resizing has something to average."""

    def smooth(low: int, high: int, w: int, h: int) -> np.ndarray:
        coarse = rng.integers(low, high, (h // 16, w // 16), dtype=np.uint8)
        return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)

    y = smooth(60, 180, width, height)
    return I420Planes(y, smooth(105, 122, width // 2, height // 2), smooth(138, 160, width // 2, height // 2))


def test_stage_timer_bills_each_block_to_its_own_stage():
    timer = StageTimer(("a", "b"))
    with timer.stage("a"):
        time.sleep(0.02)
    with timer.stage("a"):
        pass
    assert timer.seconds["a"] >= 0.02
    assert timer.seconds["b"] == 0.0
    with pytest.raises(KeyError):
        timer.stage("c")


def test_label_mask_type_is_sized_to_the_region_count():
    assert label_dtype(1) is np.uint8 and label_dtype(8) is np.uint8
    assert label_dtype(9) is np.uint16 and label_dtype(MAX_REGIONS) is np.uint16
    with pytest.raises(ValueError, match="1 to 16"):
        label_dtype(MAX_REGIONS + 1)
    with pytest.raises(ValueError):
        RegionSet(tuple(f"r{i}" for i in range(17)), lambda landmarks, w, h: None)


@pytest.mark.parametrize("seed", range(3))
def test_kernel_reads_sixteen_regions_from_a_uint16_mask_like_the_reference(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    labels = rng.integers(0, 1 << MAX_REGIONS, (40, 50)).astype(np.uint16)
    args = (image, labels, 7 - seed * 5, 9, int(rng.integers(0, 256)), int(rng.integers(0, 256)), MAX_REGIONS)
    fast = extract.region_sums(*args)
    slow = extract.region_sums_reference(*args)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    # Region 15 really is read: it has pixels of its own.
    assert fast[1][15] > 0


def test_face_crop_at_the_whole_frame_copys_scale_is_a_block_of_that_copy():
    rng = np.random.default_rng(4)
    planes = random_planes(rng, 1280, 720)
    small = planes.small_bgr(640, 360)
    # Aligned to the copy's grid (and its chroma grid): factor 2, so multiples of 4 px.
    crop = planes.resized_crop(400, 120, 800, 520, 200, 200)
    np.testing.assert_array_equal(crop, small[60:260, 200:400])


def test_small_copy_in_rgb_is_the_bgr_copy_reversed_from_planes_and_from_bgr():
    rng = np.random.default_rng(6)
    planes = random_planes(rng, 1280, 720)
    for pixels in (planes, BgrPixels(planes.to_bgr())):
        for size in ((640, 360), (1280, 720)):
            bgr = pixels.small_bgr(*size)
            np.testing.assert_array_equal(pixels.small_bgr(*size, rgb=True), bgr[..., ::-1])


def test_landmarks_read_from_the_wire_equal_the_point_by_point_read():
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(7)
    xyz = rng.uniform(-0.2, 1.2, (468, 3)).astype(np.float32)
    xyz[5] = 0.0  # proto2 optional fields: an explicit 0.0 is still on the wire
    landmarks = landmark_pb2.NormalizedLandmarkList(
        landmark=[landmark_pb2.NormalizedLandmark(x=x, y=y, z=z) for x, y, z in xyz.tolist()]
    )
    expected = np.array([(p.x, p.y) for p in landmarks.landmark], np.float32)
    fast = landmark_xy(landmarks)
    assert fast.dtype == np.float32 and fast.shape == (468, 2)
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(fast, xyz[:, :2])
    # Another layout (a visibility field, a missing z) is still read right, by the slow path.
    landmarks.landmark[3].visibility = 0.5
    landmarks.landmark[7].ClearField("z")
    np.testing.assert_array_equal(landmark_xy(landmarks), expected)
    assert landmark_xy(landmark_pb2.NormalizedLandmarkList()).shape == (0, 2)


def test_patch_from_i420_planes_matches_the_converted_crop_within_a_level_or_two():
    rng = np.random.default_rng(5)
    planes = random_planes(rng, 640, 480)
    x0, y0, side = 100, 60, 288
    from_planes = patches.patch_of(planes, x0, y0, side)
    from_bgr = patches.to_patch(planes.crop_bgr(x0, y0, x0 + side, y0 + side))
    assert from_planes.shape == (72, 72, 3) and from_planes.dtype == np.uint8
    difference = np.abs(from_planes.astype(int) - from_bgr.astype(int))
    # 288 px is four times 72: two rounded halvings (capture.yuv.shrink) on uniform noise, the worst case.
    assert difference.mean() < 1.5 and difference.max() <= 6
    # BGR frames give the same patch the old way (a view, resized, to RGB).
    bgr = BgrPixels(planes.to_bgr())
    np.testing.assert_array_equal(patches.patch_of(bgr, x0, y0, side), from_bgr)


@pytest.mark.parametrize("face_width_px", [60, 120, 200, 333, 900])
def test_tracker_shrinks_the_face_area_by_a_whole_factor(face_width_px):
    rng = np.random.default_rng(6)
    planes = random_planes(rng, 1920, 1080)
    points = (np.array([500.0, 300.0]) + rng.uniform(0, face_width_px, (20, 2))).astype(np.float32)
    tracker = FaceTracker()
    tracker.start(planes, points, (500.0, 300.0, float(face_width_px), float(face_width_px)))
    x0, y0, x1, y1 = tracker._rect  # type: ignore[misc]
    factor = tracker._factor
    assert (x1 - x0) % factor == 0 and (y1 - y0) % factor == 0
    assert (x1 - x0) // factor <= TRACK_WIDTH_PX
    assert (x1 - x0) // factor > TRACK_WIDTH_PX // 2 or factor == 1
    assert tracker.update(planes) == (0.0, 0.0)  # the same frame again: no motion


def _textured_face(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Blurred noise spanning low..high (float32, 1280x720): texture that LK can lock on to."""
    texture = cv2.GaussianBlur(rng.integers(0, 256, (720, 1280)).astype(np.float32), (0, 0), 4.0)
    return cv2.normalize(texture, None, low, high, cv2.NORM_MINMAX)


def test_tracker_follows_a_known_shift_of_a_textured_face_area():
    rng = np.random.default_rng(7)
    texture = _textured_face(rng, 16, 235).astype(np.uint8)
    chroma = np.full((360, 640), 128, np.uint8)
    points = (np.array([560.0, 260.0]) + rng.uniform(0, 150, (20, 2))).astype(np.float32)
    tracker = FaceTracker()
    tracker.start(I420Planes(texture, chroma, chroma), points, (560.0, 260.0, 150.0, 150.0))
    assert tracker._factor == 2  # the shift is followed at tracking scale and given back in frame px
    for step in (1, 2, 3):  # the face moves 2 px right and 2 px down per frame
        moved = np.roll(texture, (2 * step, 2 * step), axis=(0, 1))
        shift = tracker.update(I420Planes(moved, chroma, chroma))
        assert shift is not None
        assert shift == pytest.approx((2.0 * step, 2.0 * step), abs=0.25)


def _moved(texture: np.ndarray, rng: np.random.Generator, dx: float, dy: float) -> I420Planes:
    """The texture shifted by (dx, dy) px, with fresh sensor noise, as I420."""
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    shifted = cv2.warpAffine(texture, matrix, (1280, 720), flags=cv2.INTER_CUBIC)
    image = shifted + rng.normal(0, 3, (720, 1280))
    chroma = np.full((360, 640), 128, np.uint8)
    return I420Planes(np.clip(image, 0, 255).astype(np.uint8), chroma, chroma)


def test_tracker_does_not_drift_over_two_seconds_of_noisy_frames():
    """Flow from the landmark frame, not chained frame to frame: after 60 noisy frames of wandering the
    shift is as close to the truth as after one (chained flow drifts past 0.1 px here)."""
    rng = np.random.default_rng(11)
    texture = _textured_face(rng, 40, 215)
    points = (np.array([560.0, 260.0]) + rng.uniform(0, 150, (20, 2))).astype(np.float32)
    tracker = FaceTracker()
    tracker.start(_moved(texture, rng, 0.0, 0.0), points, (560.0, 260.0, 150.0, 150.0))
    errors = []
    for i in range(1, 61):
        dx, dy = 3.0 * np.sin(i / 9.0), 2.0 * np.sin(i / 13.0)  # a slow sway of a few px
        shift = tracker.update(_moved(texture, rng, dx, dy))
        assert shift is not None
        errors.append(max(abs(shift[0] - dx), abs(shift[1] - dy)))
    assert max(errors) < 0.1, errors


@pytest.mark.parametrize("n", [1, 2, 7, 20, 21])
def test_tracker_median_is_numpys(n):
    values = np.random.default_rng(n).normal(size=n).tolist()
    assert tracking._median(values) == pytest.approx(float(np.median(values)), abs=1e-12)


class TenRegionBackend:
    """A landmark backend with a topology of its own: ten vertical stripes over a fixed face box."""

    def __init__(self) -> None:
        self.regions = RegionSet(tuple(f"stripe_{i}" for i in range(10)), self._rasterise)

    @staticmethod
    def _rasterise(landmarks: np.ndarray, width: int, height: int) -> RegionMask | None:
        labels = np.zeros((40, 100), label_dtype(10))
        for stripe in range(10):
            labels[:, stripe * 10 : stripe * 10 + 10] = 1 << stripe
        return RegionMask(labels, 20, 30, ())

    def detect(self, pixels: object) -> np.ndarray:
        return np.array([[20.0, 30.0], [120.0, 30.0], [120.0, 70.0], [20.0, 70.0]], np.float32)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_backends_region_set_names_the_tensors_regions_and_fills_all_ten():
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = (120, 150, 200)  # BGR skin tone, passes the skin rule
    image[30:70, 20:120, 2] = np.repeat(np.arange(180, 230, 5, dtype=np.uint8), 10)  # red per stripe
    pre = Preprocessor(PreprocessConfig(min_usable_s=0.1), backend=TenRegionBackend())
    for i in range(160):  # 5.3 s, the tensor format's minimum
        pre.push(Frame(image, i / 30.0, i))
    measurement = pre.finish()
    assert measurement.meta.regions == tuple(f"stripe_{i}" for i in range(10))
    assert measurement.rgb.shape == (160, 10, 3)
    np.testing.assert_allclose(measurement.rgb[-1, :, 0], np.arange(180, 230, 5), atol=1e-3)
    assert (measurement.skin_px[-1] == 400).all()


def test_landmark_backend_is_chosen_by_name():
    assert set(BACKENDS) >= {"facemesh", "facemesh-frame", "facemesh-crop"}
    with pytest.raises(ValueError, match="landmarks must be one of"):
        backend_named("dlib")
    with pytest.raises(ValueError, match="landmarks must be one of"):
        Preprocessor(PreprocessConfig(landmarks="dlib"))


def test_yuv_frames_and_bgr_frames_give_the_same_traces():
    rng = np.random.default_rng(7)
    planes = random_planes(rng, 160, 120)
    bgr = planes.to_bgr()
    results = []
    for frame_of in (
        lambda i: YuvFrame(t_s=i / 30.0, index=i, planes=planes),
        lambda i: Frame(bgr, i / 30.0, i),
    ):
        pre = Preprocessor(
            PreprocessConfig(min_usable_s=0.1, include_patches=False), backend=TenRegionBackend()
        )
        for i in range(160):
            pre.push(frame_of(i))
        results.append(pre.finish().rgb)
    np.testing.assert_array_equal(results[0], results[1])


def test_warm_up_leaves_nothing_for_the_kernel_to_compile_during_a_measurement():
    """Checked in a fresh process (this one has compiled whatever other tests needed): after warm_up,
    region sums over I420 and BGR frames, masks at odd and even offsets, add no kernel signature."""
    script = """
import numpy as np
from capture.yuv import I420Planes
from preprocess import extract
from preprocess.pixels import BgrPixels
extract.warm_up()
before = len(extract.region_sums.signatures)
rng = np.random.default_rng(0)
planes = I420Planes(*(rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((48, 64), (24, 32), (24, 32))))
labels = np.ones((9, 11), np.uint8)
for pixels in (planes, BgrPixels(planes.to_bgr())):
    for x0, y0 in ((4, 6), (5, 7), (-3, 2), (60, 40)):
        extract.region_sums_in(pixels, labels, x0, y0, 17, 200, 1)
print(before, len(extract.region_sums.signatures))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out[0] == out[1], f"warm_up compiled {out[0]} signatures, the frames needed {out[1]}"


@pytest.mark.parametrize("factor", range(1, 7))
def test_shrink_is_the_block_average_up_to_its_rounding(factor):
    rng = np.random.default_rng(factor)
    image = rng.integers(0, 256, (36 * factor, 48 * factor), dtype=np.uint8)
    exact = image.reshape(36, factor, 48, factor).mean(axis=(1, 3))
    small = shrink(image, factor)
    assert small.shape == (36, 48) and small.dtype == np.uint8
    # Each halving rounds: at most half a level per halving, and less than a level in all here.
    assert np.abs(small - exact).max() <= 0.5 * (1 + (factor % 2 == 0) + (factor % 4 == 0)) + 1e-9


def _full_frame_replay(n: int, seen: list[tuple[str, int]]):
    """n noisy grey frames that note, as each is taken, which thread takes it and OpenCV's thread count."""
    rng = np.random.default_rng(9)
    for i in range(n):
        seen.append((threading.current_thread().name, cv2.getNumThreads()))
        yield Frame(rng.integers(90, 110, (48, 64, 3), dtype=np.uint8), i / 30.0, i)


def test_replay_turns_opencv_threads_off_for_its_duration_and_restores_them():
    config = PreprocessConfig(regions="full-frame", source="video", min_usable_s=1.0)
    seen: list[tuple[str, int]] = []
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        measurement = process(_full_frame_replay(180, seen), config, prefetch=False)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)
    assert measurement.n_frames == 180
    # The first frame is taken before the loop (by iter), the rest while OpenCV is single-threaded.
    assert {count for _, count in seen[1:]} == {1}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to see the prefetch thread")
def test_replay_reads_in_line_on_one_core_and_beside_on_two():
    config = PreprocessConfig(regions="full-frame", source="video", min_usable_s=1.0)
    cores = os.sched_getaffinity(0)
    two: list[tuple[str, int]] = []
    process(_full_frame_replay(180, two), config)
    one: list[tuple[str, int]] = []
    os.sched_setaffinity(0, {min(cores)})
    try:
        process(_full_frame_replay(180, one), config)
    finally:
        os.sched_setaffinity(0, cores)
    assert {name for name, _ in two} == {"preprocess-prefetch"}
    assert {name for name, _ in one} == {threading.current_thread().name}


def test_a_moved_mask_keeps_its_labels_and_its_outlines_follow_it():
    outline = np.array([[10, 20], [30, 20], [30, 40]], np.int32)
    labels = np.ones((21, 21), np.uint8)
    mask = RegionMask(labels, 10, 20, (outline,))
    assert mask.polygons[0] is outline
    moved = mask.moved(3, -2).moved(1, 1)
    assert (moved.x0, moved.y0) == (14, 19) and moved.labels is labels
    np.testing.assert_array_equal(moved.polygons[0], outline + np.array([4, -1]))
    np.testing.assert_array_equal(mask.polygons[0], [[10, 20], [30, 20], [30, 40]])  # the original stays
