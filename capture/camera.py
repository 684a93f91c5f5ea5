"""Live capture through OpenCV: a grabber thread feeds a bounded queue so slow processing never stalls it.

rPPG needs every frame with its true capture time. The grabber stamps each frame at grab time on the
monotonic clock, before the consumer ever sees it, so a slow consumer changes which frames it gets
(oldest are dropped and counted) but never their timestamps.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

import cv2
import numpy as np

from capture.errors import CameraNotFound, CaptureError, SourceLost
from capture.frame import Frame, SourceKind
from capture.source import SourceInfo

T = TypeVar("T")
ClockChoice = Literal["auto", "grab", "backend"]

DEFAULT_QUEUE_SIZE = 30  # about one second at 30 fps: rides out a slow frame without dropping


@dataclass(frozen=True, slots=True)
class CameraDescription:
    """A camera OpenCV could open, with the size and rate it delivers by default."""

    index: int
    device: str  # "/dev/video0" on Linux, else the index as text
    backend: str
    width: int
    height: int
    fps: float


@dataclass(frozen=True, slots=True)
class _Grabbed:
    image: np.ndarray
    t_s: float


@dataclass(frozen=True, slots=True)
class _End:
    lost: str | None  # None: normal end of a finite input; else why the source was lost


def _run_with_timeout(fn: Callable[[], T], timeout_s: float) -> tuple[bool, T | None]:
    """Run `fn` in a daemon thread; (False, None) when it does not finish in time (it keeps running).

    Opening a missing network camera or a wedged USB device can block inside OpenCV for minutes, and
    there is no way to interrupt it, so the caller abandons the attempt rather than hanging.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as err:
            error.append(err)

    thread = threading.Thread(target=target, name="vitalcam-open", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if error:
        raise error[0]
    return True, result[0]


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """Silence OpenCV's own log while probing devices.

    A missing camera makes OpenCV print "[ WARN ...] cap_v4l.cpp ... can't open camera by index" and
    obsensor errors straight to stderr, beside our own message that already says what was tried and
    what to do next. The level is process-wide, so it is restored as soon as the probe returns.
    """
    previous = cv2.getLogLevel()
    cv2.setLogLevel(0)  # LOG_LEVEL_SILENT
    try:
        yield
    finally:
        cv2.setLogLevel(previous)


def backend_timestamp_trustworthy(backend: str, pos_msec: float, grab_monotonic_s: float) -> bool:
    """Whether a frame timestamp reported by the backend can replace the grab time.

    Only V4L2 reports the driver's buffer timestamp, which is taken at exposure on CLOCK_MONOTONIC (the
    clock time.monotonic() reads on Linux) and so is better than a grab time that includes queueing delay.
    It is trusted only when it is positive and within a second before the grab; anything else (file
    positions, other clocks) is not a capture time.
    """
    if backend.upper() != "V4L2" or not sys.platform.startswith("linux") or pos_msec <= 0:
        return False
    return 0.0 <= grab_monotonic_s - pos_msec / 1000.0 < 1.0


class CameraSource:
    """Frames from a camera, a network stream or (for tests) a video file read through cv2.VideoCapture.

    A grabber thread reads continuously into a queue of `queue_size` frames; when the consumer falls
    behind the *oldest* queued frame is dropped (and counted in `dropped`) so what the consumer and the
    preview see stays current. `t_s` is the monotonic grab time relative to the first frame (or the
    driver's timestamp when `backend_timestamp_trustworthy` accepts it and clock="auto"). A source that
    stops delivering ends iteration with SourceLost; frames already yielded stay valid. File inputs are
    paced at their own frame times by default (`pace_realtime`) so they behave like a live camera; a file
    that ends before its header's frame count counts as lost.
    """

    def __init__(
        self,
        device: int | str | Path,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        duration_s: float | None = None,
        kind: SourceKind | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 2.0,
        pace_realtime: bool | None = None,
        clock: ClockChoice = "auto",
        backend: int = cv2.CAP_ANY,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.device: int | str = device if isinstance(device, int) else str(device)
        self._is_file = isinstance(self.device, str) and Path(self.device).is_file()
        if kind is None:
            kind = "camera" if isinstance(device, int) or str(device).startswith("/dev/") else "stream"
        self.duration_s = duration_s
        self.queue_size = queue_size
        self.read_timeout_s = read_timeout_s
        self.pace_realtime = self._is_file if pace_realtime is None else pace_realtime
        self.clock = clock
        self._dropped = 0
        self._grabbed = 0
        self._delivered = 0
        self._queue: collections.deque[_Grabbed | _End] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._iterated = False
        requested = {"width": width, "height": height, "fps": fps}

        def open_capture() -> tuple[cv2.VideoCapture, np.ndarray | None]:
            with _opencv_quiet():
                cap = cv2.VideoCapture(self.device, backend)
            if not cap.isOpened():
                cap.release()
                return cap, None
            if width is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height is not None:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps is not None:
                cap.set(cv2.CAP_PROP_FPS, fps)
            ok, image = cap.read()  # the delivered size is only known for sure from a real frame
            if self._is_file:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            return cap, image if ok else None

        finished, opened = _run_with_timeout(open_capture, open_timeout_s)
        tried = _describe_attempt(self.device, backend)
        if not finished or opened is None:
            raise CameraNotFound(f"opening {self.device!r} timed out after {open_timeout_s:g} s", tried)
        cap, probe = opened
        if probe is None:
            cap.release()
            raise CameraNotFound(f"could not open {self.device!r} or read a frame from it", tried)
        self._cap = cap
        self.backend_name = cap.getBackendName()
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._is_file else 0
        delivered_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(delivered_fps) or delivered_fps < 0:
            delivered_fps = 0.0
        self._info = SourceInfo(
            width=int(probe.shape[1]),
            height=int(probe.shape[0]),
            fps=delivered_fps,
            kind=kind,
            name=str(self.device),
            requested=requested,
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def dropped(self) -> int:
        """Frames grabbed but discarded because the consumer fell behind."""
        return self._dropped

    @property
    def grabbed(self) -> int:
        """Frames read from the device so far (delivered + dropped + still queued)."""
        return self._grabbed

    def _grab_loop(self) -> None:
        """Grabber thread: read, stamp, enqueue (dropping the oldest when full) until stopped or lost."""
        cap = self._cap
        t0_s: float | None = None
        clock_t0_s: float | None = None
        use_backend_clock = self.clock == "backend"
        pace_anchor_s: float | None = None
        end = _End(lost=None)
        try:
            while not self._stop.is_set():
                ok = cap.grab()
                grab_s = time.monotonic()
                if ok:
                    ok, image = cap.retrieve()
                if not ok or image is None:
                    end = _End(lost=self._why_ended())
                    break
                pos_msec = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
                if self.pace_realtime and self._is_file:
                    # Hold each file frame back until its own time has come, as a camera would deliver it.
                    if pace_anchor_s is None:
                        pace_anchor_s = grab_s - pos_msec / 1000.0
                    wait_s = pace_anchor_s + pos_msec / 1000.0 - grab_s
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                    grab_s = time.monotonic()
                if t0_s is None:
                    t0_s = grab_s
                    clock_t0_s = pos_msec / 1000.0
                    if self.clock == "auto":
                        use_backend_clock = backend_timestamp_trustworthy(self.backend_name, pos_msec, grab_s)
                t_s = (pos_msec / 1000.0 - (clock_t0_s or 0.0)) if use_backend_clock else grab_s - t0_s
                if self.duration_s is not None and t_s >= self.duration_s:
                    break
                self._push(_Grabbed(image, t_s))
        except cv2.error as err:
            end = _End(lost=f"OpenCV error while reading: {err}")
        finally:
            cap.release()
            with self._cond:
                self._queue.append(end)
                self._cond.notify_all()

    def _why_ended(self) -> str | None:
        """A finite input that reached its announced length ended normally; anything else was lost."""
        if self._is_file and self.frame_count > 0 and self._grabbed >= self.frame_count:
            return None
        if self._is_file:
            return f"{self.device}: file ended after {self._grabbed} of {self.frame_count} frames"
        return f"{self.device}: stopped delivering frames after {self._grabbed} frames (disconnected?)"

    def _push(self, item: _Grabbed) -> None:
        with self._cond:
            self._grabbed += 1
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(item)
            self._cond.notify_all()

    def start(self) -> None:
        """Start the grabber thread (iteration does this; call it early to start capturing before)."""
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(
            target=self._grab_loop, name=f"vitalcam-grab-{self.device}", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise CaptureError(f"{self.device}: a live source can be iterated only once")
        self._iterated = True
        self.start()
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        last_t_s: float | None = None
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait_for(lambda: bool(self._queue), timeout=self.read_timeout_s)
                if not self._queue:
                    raise SourceLost(
                        f"{self.device}: no frame for {self.read_timeout_s:g} s (camera stalled or disconnected)",
                        self._delivered,
                        last_t_s,
                    )
                item = self._queue.popleft()
            if isinstance(item, _End):
                if item.lost is not None:
                    raise SourceLost(item.lost, self._delivered, last_t_s)
                return
            if last_t_s is not None and item.t_s <= last_t_s:
                continue  # a backend clock that stepped back: skip rather than break strict ordering
            yield Frame(item.image, item.t_s, self._delivered)
            self._delivered += 1
            last_t_s = item.t_s

    def close(self) -> None:
        """Stop the grabber and release the device (the grabber releases it if it is still mid-read)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        elif self._cap is not None:
            self._cap.release()
        with self._cond:
            self._queue.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stop.set()


def _video_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("video*")) if sys.platform.startswith("linux") else []


def _describe_attempt(device: int | str, backend: int) -> list[str]:
    backend_name = "any backend" if backend == cv2.CAP_ANY else f"backend {backend}"
    tried = [f"cv2.VideoCapture({device!r}) with {backend_name}"]
    if sys.platform.startswith("linux") and (isinstance(device, int) or str(device).startswith("/dev/")):
        nodes = _video_devices()
        tried.append(f"/dev/video* present: {', '.join(nodes) if nodes else 'none'}")
    return tried


def list_cameras(max_index: int = 8, *, open_timeout_s: float = 3.0) -> list[CameraDescription]:
    """Cameras OpenCV can open among indices 0..max_index-1, with their default size and rate.

    On Linux only indices with a /dev/videoN node are probed (opening absent ones is slow and noisy);
    each probe is bounded by `open_timeout_s` so a wedged device cannot hang the listing.
    """
    linux = sys.platform.startswith("linux")
    found: list[CameraDescription] = []
    for index in range(max_index):
        device = f"/dev/video{index}" if linux else str(index)
        if linux and not os.path.exists(device):  # noqa: PTH110 - a device node, not a file we read
            continue

        def probe(index: int = index) -> CameraDescription | None:
            with _opencv_quiet():
                cap = cv2.VideoCapture(index)
            try:
                if not cap.isOpened():
                    return None
                return CameraDescription(
                    index=index,
                    device=f"/dev/video{index}" if linux else str(index),
                    backend=cap.getBackendName(),
                    width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                )
            finally:
                cap.release()

        finished, description = _run_with_timeout(probe, open_timeout_s)
        if finished and description is not None:
            found.append(description)
    return found
