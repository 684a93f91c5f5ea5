"""Capture: video replay timing and errors, the camera path driven by files, and the preview overlay.

Every video is generated here with PyAV so that the timestamps written are known exactly.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import capture.camera as camera_module
from capture import (
    CameraNotFound,
    CameraSource,
    CaptureError,
    FrameSource,
    SourceLost,
    VideoFileError,
    VideoFileSource,
    list_cameras,
    open_source,
)
from capture.camera import backend_timestamp_trustworthy
from capture.frame import Frame
from capture.opening import classify_spec
from capture.preview import PROGRESS_BGR, Overlay, draw_overlay, open_preview
from capture.video import frame_to_bgr
from capture.yuv import YuvFrame


def marker_image(index: int, width: int, height: int) -> np.ndarray:
    """A uniform frame whose grey level encodes its index, so decoded frames can be matched to written ones."""
    return np.full((height, width, 3), (index * 7) % 200 + 20, np.uint8)


def noise_image(index: int, width: int, height: int) -> np.ndarray:
    """An incompressible frame: makes the file large enough that truncation lands mid-stream."""
    return np.random.default_rng(index).integers(0, 255, (height, width, 3), dtype=np.uint8)


def write_video(
    path: Path,
    *,
    n_frames: int = 30,
    fps: int = 30,
    pts_ms: list[int] | None = None,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    faststart: bool = False,
    image_fn=marker_image,
) -> list[float]:
    """Encode a video and return the presentation times written, in seconds."""
    times_s = [p / 1000 for p in pts_ms] if pts_ms is not None else [i / fps for i in range(n_frames)]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(len(times_s)):
            frame = av.VideoFrame.from_ndarray(image_fn(i, width, height), format="bgr24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        if not times_s:
            container.start_encoding()
        for packet in stream.encode():
            container.mux(packet)
    return times_s


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


# --- video replay --------------------------------------------------------------------------------------


def test_cfr_timestamps_match_written_and_frames_in_order(tmp_path: Path) -> None:
    path = tmp_path / "cfr.mp4"
    written = write_video(path, n_frames=45, fps=30)
    with open_source(path) as source:
        assert isinstance(source, VideoFileSource)
        assert isinstance(source, FrameSource)
        frames = list(source)
    assert source.info.width == 64 and source.info.height == 48
    assert source.info.kind == "video" and source.info.fps == pytest.approx(30.0)
    assert source.info.requested is None and str(path) in source.info.name
    assert [f.index for f in frames] == list(range(45))
    np.testing.assert_allclose([f.t_s for f in frames], written, atol=1e-6)
    levels = [float(f.image.mean()) for f in frames]
    np.testing.assert_allclose(levels, [float(marker_image(i, 1, 1)[0, 0, 0]) for i in range(45)], atol=3)
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (48, 64, 3)


def test_vfr_keeps_irregular_presentation_times(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pts_ms = np.cumsum(np.r_[0, rng.integers(20, 70, 59)]).tolist()  # 14..50 fps, jittered
    path = tmp_path / "vfr.mp4"
    written = write_video(path, pts_ms=pts_ms)
    with VideoFileSource(path) as source:
        t_s = [f.t_s for f in source]
    np.testing.assert_allclose(t_s, written, atol=1e-3)
    gaps = np.diff(t_s)
    assert gaps.min() < 0.025 and gaps.max() > 0.065  # really variable, not re-timed to a constant rate


def test_bgr_colour_is_preserved(tmp_path: Path) -> None:
    bgr = (40, 120, 210)
    path = tmp_path / "colour.mp4"
    write_video(path, n_frames=3, image_fn=lambda i, w, h: np.full((h, w, 3), bgr, np.uint8))
    with VideoFileSource(path) as source:
        image = next(iter(source)).image
    np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), bgr, atol=4)


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "suffix"), [("libx264", "yuv444p", ".mp4"), ("ffv1", "yuv420p", ".mkv")]
)
def test_odd_sizes_decode_at_their_exact_size(tmp_path: Path, codec: str, pix_fmt: str, suffix: str) -> None:
    """H.264 4:2:0 cannot store odd sizes, but 4:4:4 H.264 and FFV1 can: they come back uncropped."""
    bgr = (30, 120, 200)
    path = tmp_path / f"odd{suffix}"
    write_video(
        path, n_frames=4, width=641, height=363, codec=codec, pix_fmt=pix_fmt,
        image_fn=lambda i, w, h: np.full((h, w, 3), bgr, np.uint8),
    )  # fmt: skip
    with VideoFileSource(path) as source:
        frames = list(source)
    assert (source.info.width, source.info.height) == (641, 363)
    assert len(frames) == 4 and frames[0].image.shape == (363, 641, 3)
    np.testing.assert_allclose(frames[0].image.reshape(-1, 3).mean(axis=0), bgr, atol=4)


@pytest.mark.parametrize(
    ("rotation", "bar_side"), [(90, "bottom"), (-90, "top"), (180, "right"), (0, "left")]
)
def test_rotation_metadata_makes_frames_upright(tmp_path: Path, rotation: int, bar_side: str) -> None:
    """A white bar on the stored frame's left ends up where a player would show it after rotation."""

    def left_bar(i: int, w: int, h: int) -> np.ndarray:
        image = np.zeros((h, w, 3), np.uint8)
        image[:, :8] = 255
        return image

    path = tmp_path / f"rot{rotation}.mp4"
    write_video(path, n_frames=3, width=64, height=32, rotation=rotation, image_fn=left_bar)
    with VideoFileSource(path) as source:
        image = next(iter(source)).image
    rotated = rotation % 180 != 0
    assert image.shape[:2] == ((64, 32) if rotated else (32, 64))
    assert (source.info.height, source.info.width) == image.shape[:2]
    edges = {
        "left": image[:, :4],
        "right": image[:, -4:],
        "top": image[:4],
        "bottom": image[-4:],
    }
    assert edges[bar_side].mean() > 200
    assert all(region.mean() < 128 for side, region in edges.items() if side != bar_side)


def test_segment_start_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, n_frames=120, fps=30)
    with VideoFileSource(path, start_s=1.0, duration_s=1.5) as source:
        frames = list(source)
    assert source.offset_s == pytest.approx(1.0, abs=1e-6)
    assert len(frames) == 45
    np.testing.assert_allclose([f.t_s for f in frames], np.arange(45) / 30, atol=1e-6)
    assert [f.index for f in frames] == list(range(45))
    # The pixels are those of written frames 30..74, not of the keyframe the seek landed on.
    assert frames[0].image.mean() == pytest.approx(marker_image(30, 1, 1)[0, 0, 0], abs=3)


def test_info_states_the_replay_length_for_progress(tmp_path: Path) -> None:
    path = tmp_path / "length.mp4"
    write_video(path, n_frames=120, fps=30)
    with VideoFileSource(path) as source:
        assert source.info.frame_count == 120
        assert source.info.duration_s == pytest.approx(4.0, abs=1 / 30)
    # A segment: its own length; the header's frame count is for the whole file, so it is not given.
    with VideoFileSource(path, start_s=1.0, duration_s=1.5) as source:
        assert source.info.duration_s == pytest.approx(1.5) and source.info.frame_count is None
    with VideoFileSource(path, start_s=3.0, duration_s=5.0) as source:
        assert source.info.duration_s == pytest.approx(1.0, abs=1 / 30)
    # Matroska keeps no frame count, only a duration.
    mkv = tmp_path / "length.mkv"
    write_video(mkv, n_frames=60, fps=30)
    with VideoFileSource(mkv) as source:
        assert source.info.frame_count is None
        assert source.info.duration_s == pytest.approx(2.0, abs=2 / 30)


def test_start_beyond_end_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    write_video(path, n_frames=30)
    with pytest.raises(VideoFileError, match=r"short\.mp4.*start_s=5"):
        VideoFileSource(path, start_s=5.0)


def test_replay_can_be_iterated_again(tmp_path: Path) -> None:
    path = tmp_path / "again.mp4"
    write_video(path, n_frames=20)
    with VideoFileSource(path) as source:
        first = [f.t_s for f in source]
        second = [f.t_s for f in source]
    assert first == second and len(first) == 20


def test_realtime_pacing_delivers_frames_at_their_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "paced.mp4"
    write_video(path, n_frames=30, fps=30)
    lags_s = []
    with VideoFileSource(path, realtime=True) as source:
        start = None
        for frame in source:
            now = time.monotonic()
            start = now if start is None else start
            lags_s.append((now - start) - frame.t_s)
    assert min(lags_s) >= 0.0  # never early
    assert max(lags_s) < 0.1  # and not late on an idle consumer
    assert frame.t_s == pytest.approx(29 / 30)


def test_missing_empty_and_text_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VideoFileError, match=r"nothing\.mp4: no such file"):
        open_source(tmp_path / "nothing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoFileError, match=r"empty\.mp4: empty file"):
        open_source(empty)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoFileError, match=r"notes\.mp4: not a readable video"):
        open_source(text)
    with pytest.raises(VideoFileError, match="not a regular file"):
        open_source(tmp_path)


def test_zero_frame_video_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp4"
    write_video(path, n_frames=0)
    assert path.stat().st_size > 0
    with pytest.raises(VideoFileError, match=r"zero\.mp4: contains no"):
        VideoFileSource(path)


def test_truncated_mp4_yields_frames_before_the_damage_then_raises(tmp_path: Path) -> None:
    path = tmp_path / "whole.mp4"
    written = write_video(path, n_frames=60, width=160, height=120, faststart=True, image_fn=noise_image)
    cut = truncate(path, 0.6)
    got = []
    # One decoder thread (a process pinned to one core) meets the cut as a decode error, several as an
    # early end of stream: both name the file and say it is truncated.
    with (
        VideoFileSource(cut) as source,
        pytest.raises(VideoFileError, match=r"cut_whole\.mp4: (corrupt or )?truncated"),
    ):
        for frame in source:
            got.append(frame)
    assert 10 < len(got) < 60
    np.testing.assert_allclose([f.t_s for f in got], written[: len(got)], atol=1e-6)
    # The last frame delivered is as faithful as the first (real picture, not concealment garbage).
    first_err = np.abs(got[0].image - noise_image(0, 160, 120).astype(np.float64)).mean()
    last_err = np.abs(got[-1].image - noise_image(len(got) - 1, 160, 120).astype(np.float64)).mean()
    unrelated_err = np.abs(got[-1].image - noise_image(999, 160, 120).astype(np.float64)).mean()
    assert last_err < first_err + 10 < unrelated_err


def test_truncated_mkv_is_detected_from_the_header_duration(tmp_path: Path) -> None:
    path = tmp_path / "whole.mkv"
    write_video(path, n_frames=60, width=160, height=120, image_fn=noise_image)
    got = []
    with pytest.raises(VideoFileError, match=r"cut_whole\.mkv: truncated: header says 2\.000 s"):
        for frame in VideoFileSource(truncate(path, 0.5)):
            got.append(frame)
    assert 0 < len(got) < 60


def test_mp4_without_its_index_fails_at_open(tmp_path: Path) -> None:
    """A plain MP4 writes its index last: cut short, nothing is decodable, and the open says so."""
    path = tmp_path / "nofast.mp4"
    write_video(path, n_frames=30, width=160, height=120, image_fn=noise_image)
    with pytest.raises(VideoFileError, match=r"cut_nofast\.mp4: not a readable video.*truncated"):
        VideoFileSource(truncate(path, 0.7))


def test_corrupt_middle_yields_good_frames_then_raises(tmp_path: Path) -> None:
    path = tmp_path / "good.mp4"
    write_video(path, n_frames=60, width=160, height=120, faststart=True, image_fn=noise_image)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(1).integers(0, 255, 4000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    got = []
    with pytest.raises(VideoFileError, match=r"bad\.mp4: (corrupt|truncated)"):
        for frame in VideoFileSource(bad):
            got.append(frame)
    assert 10 < len(got) < 60


def test_open_source_dispatch_and_option_checks(tmp_path: Path) -> None:
    assert classify_spec(0) == ("camera", 0)
    assert classify_spec("2") == ("camera", 2)
    assert classify_spec("/dev/video3") == ("camera", "/dev/video3")
    assert classify_spec("rtsp://cam.local/stream") == ("stream", "rtsp://cam.local/stream")
    assert classify_spec("HTTPS://x/y.mjpg")[0] == "stream"
    assert classify_spec(Path("a.mp4")) == ("video", "a.mp4")
    assert classify_spec("clips/a.mp4") == ("video", "clips/a.mp4")
    path = tmp_path / "v.mp4"
    write_video(path, n_frames=5)
    with pytest.raises(ValueError, match="camera requests"):
        open_source(path, width=640)
    with pytest.raises(ValueError, match="video files only"):
        open_source(0, start_s=1.0)


# --- camera path (cv2.VideoCapture in a grabber thread), driven by files and fakes -------------------------


def test_camera_path_on_a_paced_file_delivers_every_frame_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    write_video(path, n_frames=30, fps=30)
    with CameraSource(path, width=320, height=240, fps=30) as source:
        assert source.pace_realtime
        frames = list(source)
    assert source.info.kind == "stream"
    assert (source.info.width, source.info.height) == (64, 48)  # delivered, not requested
    assert source.info.requested == {"width": 320, "height": 240, "fps": 30}
    assert source.info.fps == pytest.approx(30.0)
    assert source.info.duration_s is None and source.info.frame_count is None  # live: length unknown
    assert len(frames) == 30 and source.dropped == 0
    t_s = np.array([f.t_s for f in frames])
    assert t_s[0] == 0.0 and np.all(np.diff(t_s) > 0)
    assert t_s[-1] == pytest.approx(29 / 30, abs=0.08)  # grab-time clock follows the real-time pacing
    assert frames[10].image.mean() == pytest.approx(marker_image(10, 1, 1)[0, 0, 0], abs=3)


def test_slow_consumer_drops_oldest_and_keeps_true_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "fast.mp4"
    write_video(path, n_frames=60, fps=30)
    frames = []
    with CameraSource(path, queue_size=3) as source:
        for frame in source:
            frames.append(frame)
            time.sleep(0.1)  # processing three times slower than the camera
    assert source.dropped > 20
    assert len(frames) + source.dropped == source.grabbed == 60
    t_s = np.array([f.t_s for f in frames])
    assert np.all(np.diff(t_s) > 0)
    assert [f.index for f in frames] == list(range(len(frames)))
    # Timestamps are grab times, not delivery times: the 2 s of video spans ~2 s, although the
    # consumer needs len(frames) * 0.1 s to see them.
    assert t_s[-1] == pytest.approx(59 / 30, abs=0.15)
    # Each delivered frame's picture belongs to its timestamp (frame i was written for t = i/30).
    for frame in frames[::5]:
        written_index = round(frame.t_s * 30)
        level = marker_image(written_index, 1, 1)[0, 0, 0]
        assert abs(frame.image.mean() - level) <= 7 + 3  # within one frame of pacing jitter


def test_source_dying_midway_raises_source_lost_after_the_good_frames(tmp_path: Path) -> None:
    path = tmp_path / "dies.mp4"
    write_video(path, n_frames=60, width=160, height=120, faststart=True, image_fn=noise_image)
    got = []
    source = CameraSource(truncate(path, 0.6), pace_realtime=False)
    with source, pytest.raises(SourceLost, match="ended after") as excinfo:
        for frame in source:
            got.append(frame)
    assert 10 < len(got) < 60
    assert excinfo.value.frames_delivered == len(got)
    assert excinfo.value.last_t_s == got[-1].t_s
    assert np.all(np.diff([f.t_s for f in got]) > 0)


class FakeCapture:
    """Stands in for cv2.VideoCapture: delivers `frames` frames, then stalls or fails as configured."""

    frames = 5
    after = "stall"  # "stall" blocks in grab(); "fail" returns False
    open_delay_s = 0.0
    opened = True

    def __init__(self, device: object, backend: int = 0) -> None:
        time.sleep(self.open_delay_s)
        self.count = 0
        self.released = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 - mirrors cv2.VideoCapture
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        return False

    def get(self, prop: int) -> float:
        return 0.0

    def getBackendName(self) -> str:  # noqa: N802 - mirrors cv2.VideoCapture
        return "FAKE"

    def read(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((24, 32, 3), np.uint8)

    def grab(self) -> bool:
        self.count += 1
        if self.count > self.frames:
            if self.after == "stall":
                self.released.wait(5.0)
            return False
        time.sleep(0.005)
        return True

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.full((24, 32, 3), self.count, np.uint8)

    def release(self) -> None:
        self.released.set()


def test_stalled_camera_ends_with_source_lost_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(camera_module.cv2, "VideoCapture", FakeCapture)
    got = []
    start = time.monotonic()
    source = CameraSource(0, read_timeout_s=0.5)
    with source, pytest.raises(SourceLost, match=r"no frame for 0\.5 s"):
        for frame in source:
            got.append(frame)
    assert len(got) == 5 and time.monotonic() - start < 3.0
    assert source.info.fps == 0.0  # backend did not report a rate: unknown, not invented


def test_unplugged_camera_ends_with_source_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unplugged(FakeCapture):
        after = "fail"

    monkeypatch.setattr(camera_module.cv2, "VideoCapture", Unplugged)
    with CameraSource(0) as source:
        got = []
        with pytest.raises(SourceLost, match="stopped delivering frames after 5"):
            for frame in source:
                got.append(frame)
    assert [int(f.image[0, 0, 0]) for f in got] == [1, 2, 3, 4, 5]
    with pytest.raises(CaptureError, match="only once"):
        iter(source)


def test_camera_open_that_hangs_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class Hangs(FakeCapture):
        open_delay_s = 3.0

    monkeypatch.setattr(camera_module.cv2, "VideoCapture", Hangs)
    start = time.monotonic()
    with pytest.raises(CameraNotFound, match=r"timed out after 0\.3 s"):
        CameraSource(1, open_timeout_s=0.3)
    assert time.monotonic() - start < 1.5


def test_camera_duration_limits_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    class Endless(FakeCapture):
        frames = 10_000

    monkeypatch.setattr(camera_module.cv2, "VideoCapture", Endless)
    with CameraSource(0, duration_s=0.2) as source:
        t_s = [f.t_s for f in source]
    assert len(t_s) > 5 and t_s[-1] < 0.2 and np.all(np.diff(t_s) > 0)


def test_no_camera_is_a_quick_clear_error() -> None:
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has video devices")
    start = time.monotonic()
    with pytest.raises(CameraNotFound) as excinfo:
        open_source(0)
    message = str(excinfo.value)
    assert "tried" in message and "cv2.VideoCapture(0)" in message and "/dev/video* present: none" in message
    with pytest.raises(CameraNotFound, match="/dev/video7"):
        open_source("/dev/video7")
    assert list_cameras() == []
    assert time.monotonic() - start < 10.0


def test_unreachable_stream_is_camera_not_found() -> None:
    with pytest.raises(CameraNotFound, match=r"rtsp://127\.0\.0\.1:9/none"):
        CameraSource("rtsp://127.0.0.1:9/none", open_timeout_s=5.0)


def test_backend_timestamps_trusted_only_when_plausible() -> None:
    now_s = time.monotonic()
    assert backend_timestamp_trustworthy("V4L2", (now_s - 0.02) * 1000, now_s)
    assert not backend_timestamp_trustworthy("V4L2", 0.0, now_s)
    assert not backend_timestamp_trustworthy("V4L2", (now_s + 0.5) * 1000, now_s)  # from the future
    assert not backend_timestamp_trustworthy("V4L2", 1234.0, now_s + 100)  # another clock (file position)
    assert not backend_timestamp_trustworthy("FFMPEG", (now_s - 0.02) * 1000, now_s)


# --- preview --------------------------------------------------------------------------------------------


def test_draw_overlay_draws_box_regions_progress_pulse_and_leaves_input_alone() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    overlay = Overlay(
        face_box_px=(100, 60, 80, 100),
        polygons=[np.array([[20, 20], [60, 20], [60, 50], [20, 50]])],
        hints=["move closer"],
        progress=0.5,
        pulse=np.sin(np.linspace(0, 12, 90)),
        phase="measuring",
    )
    drawn = draw_overlay(image, overlay)
    assert image.max() == 0  # input untouched
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert drawn[60, 140].any() and drawn[160, 140].any() and drawn[110, 100].any()  # box edges
    assert not drawn[110, 140].any()  # box interior stays clear
    assert drawn[20, 40].any() and drawn[50, 20].any()  # region outline
    assert tuple(drawn[-1, 100]) == PROGRESS_BGR and tuple(drawn[-1, 260]) == (40, 40, 40)  # half filled
    strip = drawn[180:225, 210:315]
    assert (strip[..., 2] > 200).sum() > 50  # red pulse trace bottom right
    assert np.array_equal(draw_overlay(image, None), image)
    assert np.array_equal(draw_overlay(image, Overlay()), image)


def test_preview_without_display_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(camera_module.sys, "platform", "linux")
    with open_preview("test") as preview:
        assert preview.enabled is False
        assert preview.show(np.zeros((10, 10, 3), np.uint8), Overlay(hints=["x"])) is True
    preview.close()


def test_preview_falls_back_when_window_creation_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise cv2.error("no display")

    monkeypatch.setattr(cv2, "namedWindow", broken)
    preview = open_preview("test", enabled=True)
    assert preview.enabled is False
    assert preview.show(np.zeros((10, 10, 3), np.uint8)) is True


def test_fast_yuv420_conversion_matches_pyav_planes_with_row_padding(tmp_path: Path) -> None:
    """The single-copy I420 packing must read padded plane rows exactly like PyAV's own to_ndarray."""
    path = tmp_path / "padded.mp4"
    write_video(path, n_frames=2, width=102, height=70, image_fn=noise_image)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        assert frame.planes[0].line_size > frame.width  # the case under test: rows carry padding
        expected = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
        assert np.array_equal(frame_to_bgr(frame), expected)


def test_replay_frames_carry_i420_planes_and_convert_lazily(tmp_path: Path) -> None:
    """Replay frames keep the decoder's planes; `image` is still the exact BGR and crops match it."""
    path = tmp_path / "planes.mp4"
    write_video(path, n_frames=3, width=102, height=70, image_fn=noise_image)
    with VideoFileSource(path) as source:
        frames = list(source)
    with VideoFileSource(path, yuv=False) as source:
        eager = list(source)
    assert all(isinstance(f, YuvFrame) and f.planes is not None for f in frames)
    assert not any(isinstance(f, YuvFrame) for f in eager)
    frame = frames[1]
    np.testing.assert_array_equal(frame.image, eager[1].image)
    assert frame.image is frame.image  # converted once
    planes = frame.planes
    for x0, y0, x1, y1 in [
        (0, 0, 102, 70),
        (3, 5, 51, 41),
        (1, 1, 2, 2),
        (-5, -5, 200, 200),
        (99, 67, 110, 90),
    ]:
        expected = frame.image[max(0, y0) : y1, max(0, x0) : x1]
        np.testing.assert_array_equal(planes.crop_bgr(x0, y0, x1, y1), expected)
    np.testing.assert_array_equal(planes.grey_crop(2, 3, 40, 30), planes.y[3:30, 2:40])
    assert planes.small_bgr(51, 35).shape == (34, 50, 3)
    back = pickle.loads(pickle.dumps(frame))
    assert type(back) is Frame and back.t_s == frame.t_s and np.array_equal(back.image, frame.image)
    moved = dataclasses.replace(frame, t_s=9.0)
    assert moved.t_s == 9.0 and np.array_equal(moved.image, frame.image)


def test_rotated_replay_frames_are_converted_upright_bgr(tmp_path: Path) -> None:
    path = tmp_path / "rotated_planes.mp4"
    write_video(path, n_frames=2, width=64, height=48, rotation=90)
    with VideoFileSource(path) as source:
        frames = list(source)
    assert not any(isinstance(f, YuvFrame) for f in frames) and frames[0].image.shape == (64, 48, 3)


# --- decoding in a child process (replay on two cores) ---------------------------------------------


def _background(source: VideoFileSource):
    from capture.video import BackgroundDecode

    return BackgroundDecode(source, slots=4)


def test_background_decode_delivers_the_same_frames_as_decoding_here(tmp_path: Path) -> None:
    path = tmp_path / "bg.mp4"
    written = write_video(path, n_frames=40, width=160, height=120, image_fn=noise_image)
    with VideoFileSource(path) as source:
        here = [(f.t_s, f.index, f.image.copy()) for f in source]
        elsewhere = _background(source)
        got = []
        previous = None
        for frame in elsewhere:
            assert isinstance(frame, YuvFrame) and frame.planes is not None
            if previous is not None:  # the frame before is still intact (the tracker may read its Y plane)
                np.testing.assert_array_equal(previous[1].planes.y, previous[0])
            previous = (frame.planes.y.copy(), frame)
            got.append((frame.t_s, frame.index, frame.image.copy()))
    assert len(got) == len(here) == 40
    np.testing.assert_allclose([g[0] for g in got], written, atol=1e-6)
    for (t_a, i_a, image_a), (t_b, i_b, image_b) in zip(here, got, strict=True):
        assert t_a == t_b and i_a == i_b
        np.testing.assert_array_equal(image_a, image_b)


def test_background_decode_reports_damage_after_the_good_frames(tmp_path: Path) -> None:
    path = tmp_path / "whole.mp4"
    write_video(path, n_frames=60, width=160, height=120, faststart=True, image_fn=noise_image)
    cut = truncate(path, 0.6)
    # The child decodes on one thread; how many frames precede the damage depends on the thread count.
    with VideoFileSource(cut, decoder_threads=1) as source:
        inline = []
        with pytest.raises(VideoFileError) as here:
            inline.extend(f.t_s for f in source)
        got = []
        with pytest.raises(VideoFileError) as elsewhere:
            got.extend(f.t_s for f in _background(source))
    assert got == inline and 10 < len(got) < 60
    assert str(elsewhere.value) == str(here.value)


def test_background_decode_stopped_early_ends_its_child_and_frees_the_memory(tmp_path: Path) -> None:
    from multiprocessing.shared_memory import SharedMemory

    path = tmp_path / "long.mp4"
    write_video(path, n_frames=90, width=160, height=120)
    with VideoFileSource(path) as source:
        frames = _background(source)
        first = next(frames)
        name = frames._shm.name
        frames.close()
    assert first.index == 0
    assert frames._process.poll() is not None  # the child has exited
    with pytest.raises(FileNotFoundError):
        SharedMemory(name=name)
    with pytest.raises(StopIteration):
        next(frames)


def test_background_decode_falls_back_to_decoding_here_when_the_child_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import capture.video as video_module

    path = tmp_path / "short.mp4"
    written = write_video(path, n_frames=12)
    monkeypatch.setattr(video_module.sys, "executable", "/bin/false")  # exits at once, says nothing
    with VideoFileSource(path) as source:
        got = [frame.t_s for frame in _background(source)]
    np.testing.assert_allclose(got, written, atol=1e-6)
