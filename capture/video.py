"""Video file replay through PyAV: true presentation timestamps, rotation, segments and real-time pacing.

PyAV rather than cv2.VideoCapture because rPPG needs each frame's real presentation time (variable frame
rate phone videos would be mistimed by index/fps) and a decode error must be told apart from the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import av
import av.error
import cv2
import numpy as np

from capture.errors import VideoFileError
from capture.frame import Frame
from capture.source import SourceInfo
from capture.yuv import I420Planes, YuvFrame

# FFmpeg enum values (libavutil/pixfmt.h): the colour tags for which OpenCV's I420 conversion is exact.
_COLORSPACES_BT601 = {2, 5, 6}  # unspecified, bt470bg, smpte170m
_RANGE_JPEG = 2
# Timestamps closer than this are the same instant: guards float round-off in segment bounds.
_EPS_S = 1e-6


@dataclass(frozen=True, slots=True)
class _Decoded:
    """One decoded frame in video time (seconds since the stream's first frame): BGR, or I420 planes."""

    image: np.ndarray | I420Planes
    video_t_s: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as delivered."""
        if isinstance(self.image, I420Planes):
            return self.image.width, self.image.height
        return int(self.image.shape[1]), int(self.image.shape[0])


def _opencv_i420_exact(frame: av.VideoFrame) -> bool:
    """8-bit 4:2:0, even size, BT.601 or untagged, limited range: OpenCV's I420 conversion is exact."""
    return (
        frame.format.name == "yuv420p"
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and frame.colorspace in _COLORSPACES_BT601
        and frame.color_range != _RANGE_JPEG
    )


def _bit_rate_bps(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The video stream's bit rate: the stream header's, else the file size over its duration."""
    if stream.bit_rate:
        return float(stream.bit_rate)
    duration_s = _header_duration_s(container, stream)
    size = getattr(container, "size", 0) or 0
    if duration_s and size and len(container.streams) == 1:
        return 8.0 * float(size) / duration_s
    return None


def frame_to_planes(frame: av.VideoFrame) -> I420Planes | None:
    """Zero-copy views of an upright I420 frame's planes, or None when it needs swscale or rotation.

    The views keep the decoder's buffer alive (FFmpeg buffers are reference counted, so the decoder
    does not reuse it), which saves the full-frame copy and BGR conversion for consumers that only read
    parts of the frame.
    """
    if not _opencv_i420_exact(frame) or round(frame.rotation / 90) % 4:
        return None
    width, height = frame.width, frame.height
    views = [
        np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:plane_h, :plane_w]
        for plane, (plane_w, plane_h) in zip(
            frame.planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2)), strict=True
        )
    ]
    return I420Planes(*views)


def frame_to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """Convert a decoded frame to an upright BGR uint8 image.

    The common case (8-bit 4:2:0, BT.601 or untagged, limited range, even size) goes through OpenCV's SIMD
    I420 conversion, about 2x faster than PyAV's swscale call here and the same matrix cv2.VideoCapture
    applies; every other format goes through swscale, which honours the colour tags. The display matrix
    rotation (phones record portrait video as rotated landscape) is applied so the face is upright.
    """
    if _opencv_i420_exact(frame):
        image = cv2.cvtColor(_i420_buffer(frame), cv2.COLOR_YUV2BGR_I420)
    else:
        image = frame.to_ndarray(format="bgr24", threads=0)
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as the display matrix states
    if quarter_turns:
        image = np.ascontiguousarray(np.rot90(image, quarter_turns))
    return image


def _i420_buffer(frame: av.VideoFrame) -> np.ndarray:
    """The three planes of a yuv420p frame packed into one I420 array with a single copy.

    Planes carry row padding (line_size > width); VideoFrame.to_ndarray() strips it with extra copies
    that cost more than the colour conversion itself at 480p.
    """
    width, height = frame.width, frame.height
    packed = np.empty(width * height * 3 // 2, np.uint8)
    offset = 0
    for plane, (plane_w, plane_h) in zip(
        frame.planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2)), strict=True
    ):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:plane_h, :plane_w]
        packed[offset : offset + plane_w * plane_h].reshape(plane_h, plane_w)[:] = rows
        offset += plane_w * plane_h
    return packed.reshape(height * 3 // 2, width)


class VideoFileSource:
    """Replays a video file as `Frame`s whose `t_s` are the file's presentation times.

    `t_s` counts from the first delivered frame (so a segment starts at 0 like a camera does);
    `offset_s` is that frame's time in the video, so video time = `offset_s + t_s`. Frames whose
    timestamp does not increase (broken muxers) are skipped and counted in `dropped`, because every later
    stage needs strictly increasing times. The file is opened and its first frame decoded in the
    constructor, so a bad file fails at open with a message naming it. Each iteration replays the segment
    from its start.

    With `yuv` (the default), frames that OpenCV converts exactly (8-bit 4:2:0 BT.601, not rotated) are
    `capture.yuv.YuvFrame`s: `image` is still BGR but converted on first access, and the preprocessor
    reads the decoder's planes directly, converting only what it needs. `yuv=False` converts every frame.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        start_s: float = 0.0,
        duration_s: float | None = None,
        realtime: bool = False,
        yuv: bool = True,
        decoder_threads: int = 0,
    ) -> None:
        if start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {start_s}")
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        self.path = Path(path)
        self.start_s = float(start_s)
        self.duration_s = duration_s
        self.realtime = realtime
        self.yuv = yuv
        self.decoder_threads = decoder_threads  # 0: FFmpeg's choice (frame threads, one per core and one)
        self._dropped = 0
        self._container: av.container.InputContainer | None = None
        self._check_file()
        container = self._open_container()
        stream = container.streams.video[0]
        self.nominal_fps = _nominal_fps(stream)
        self._primed: Iterator[_Decoded] | None = self._decode(container)
        try:
            first = next(self._primed)
        except StopIteration:
            container.close()
            raise VideoFileError(str(self.path), self._no_frames_problem(stream)) from None
        except VideoFileError:
            container.close()
            raise
        self._first = first
        self._container = container
        self.offset_s = first.video_t_s
        width, height = first.size
        # What this replay will cover: from the first delivered frame to the file's end or the limit.
        segment_s = None if duration_s is None else float(duration_s)
        file_duration_s = _header_duration_s(container, stream)
        if file_duration_s is not None:
            rest_s = max(0.0, file_duration_s - self.offset_s)
            segment_s = rest_s if duration_s is None else min(rest_s, duration_s)
        whole_file = self.start_s == 0 and duration_s is None
        self._info = SourceInfo(
            width=width,
            height=height,
            fps=self.nominal_fps,
            kind="video",
            name=str(self.path),
            duration_s=segment_s,
            frame_count=stream.frames if whole_file and stream.frames > 0 else None,
            bit_rate_bps=_bit_rate_bps(container, stream),
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    @property
    def dropped(self) -> int:
        """Frames skipped because their timestamp did not increase (0 for a well-formed file)."""
        return self._dropped

    def _check_file(self) -> None:
        path = self.path
        if not path.exists():
            raise VideoFileError(str(path), "no such file")
        if not path.is_file():
            raise VideoFileError(str(path), "not a regular file")
        if path.stat().st_size == 0:
            raise VideoFileError(str(path), "empty file (0 bytes)")

    def _open_container(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as err:
            raise VideoFileError(
                str(self.path),
                f"not a readable video: unknown format, or the file is corrupt or truncated ({err.strerror})",
            ) from err
        if not container.streams.video:
            container.close()
            raise VideoFileError(
                str(self.path), "contains no video stream (or a video stream without frames)"
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.decoder_threads:
            stream.codec_context.thread_count = self.decoder_threads
        return container

    def _no_frames_problem(self, stream: av.video.stream.VideoStream) -> str:
        if self.start_s > 0:
            return (
                f"no frames at or after start_s={self.start_s:g} s (video is {_stream_duration_s(stream)} s)"
            )
        return "contains no decodable video frames"

    def _decode(self, container: av.container.InputContainer) -> Iterator[_Decoded]:
        """Decode the segment in video time; raise VideoFileError after the last good frame on damage."""
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        time_base_s = float(time_base)
        origin_pts = stream.start_time
        end_s = None if self.duration_s is None else self.start_s + self.duration_s
        if self.start_s > 0:
            origin = origin_pts or 0
            try:
                container.seek(origin + int(self.start_s / time_base), stream=stream, backward=True)
            except av.error.FFmpegError as err:
                raise VideoFileError(str(self.path), f"cannot seek to {self.start_s:g} s ({err})") from err
        decoded = 0
        last_t_s: float | None = None

        def convert(frame: av.VideoFrame) -> _Decoded | None:
            nonlocal origin_pts, last_t_s, decoded
            decoded += 1
            if frame.pts is None:  # no timestamp: assume the nominal spacing after the previous frame
                t_s = 0.0 if last_t_s is None else last_t_s + 1.0 / (self.nominal_fps or 30.0)
            else:
                if origin_pts is None:
                    origin_pts = frame.pts
                t_s = (frame.pts - origin_pts) * time_base_s
            last_t_s = t_s
            if t_s < self.start_s - _EPS_S:
                return None
            planes = frame_to_planes(frame) if self.yuv else None
            return _Decoded(planes if planes is not None else frame_to_bgr(frame), t_s)

        try:
            frames = (frame for packet in container.demux(stream) for frame in stream.decode(packet))
            yield from _segment(frames, convert, end_s)
        except av.error.FFmpegError as err:
            # Frames already inside the decoder precede the damage: deliver them, then report.
            yield from self._drain(stream, convert, end_s)
            where = "before the first frame" if last_t_s is None else f"after {last_t_s:.3f} s"
            raise VideoFileError(
                str(self.path), f"corrupt or truncated: decoding failed {where} ({err.strerror})"
            ) from err
        if end_s is None:
            problem = _truncation_problem(
                container, stream, last_t_s, decoded, self.nominal_fps, self.start_s
            )
            if problem:
                raise VideoFileError(str(self.path), problem)

    @staticmethod
    def _drain(
        stream: av.video.stream.VideoStream,
        convert: Callable[[av.VideoFrame], _Decoded | None],
        end_s: float | None,
    ) -> Iterator[_Decoded]:
        try:
            frames = list(stream.decode(None))
        except av.error.FFmpegError:
            return
        yield from _segment(frames, convert, end_s)

    def __iter__(self) -> Iterator[Frame]:
        if self._primed is not None:
            decoded, self._primed = self._primed, None
            items = _prepend(self._first, decoded)
        else:
            container = self._open_container()
            self._container = container
            items = self._decode(container)
        return self._frames(items)

    def _frames(self, items: Iterator[_Decoded]) -> Iterator[Frame]:
        index = 0
        last_t_s: float | None = None
        anchor: float | None = None
        for item in items:
            t_s = item.video_t_s - self.offset_s
            if last_t_s is not None and t_s <= last_t_s:
                self._dropped += 1
                continue
            if self.realtime:
                now = time.monotonic()
                if anchor is None:
                    anchor = now - t_s
                wait_s = anchor + t_s - now
                if wait_s > 0:
                    time.sleep(wait_s)
            if isinstance(item.image, I420Planes):
                yield YuvFrame(t_s=t_s, index=index, planes=item.image)
            else:
                yield Frame(item.image, t_s, index)
            index += 1
            last_t_s = t_s

    def decoded_elsewhere(self, slots: int = 12) -> Iterator[Frame]:
        """The same frames, decoded in a child process on another core (`BackgroundDecode`).

        For replays as fast as possible on a machine with two or more cores; falls back to iterating
        here when the source paces itself (`realtime`) or only one core is available.
        """
        if self.realtime or len(os.sched_getaffinity(0)) < 2 or not sys.executable:
            return iter(self)  # paced, one core, or an embedded interpreter that cannot start a child
        return BackgroundDecode(self, slots)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._primed = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _segment(
    frames: Iterable[av.VideoFrame], convert: Callable[[av.VideoFrame], _Decoded | None], end_s: float | None
) -> Iterator[_Decoded]:
    """The converted frames that fall in the segment, up to (not including) the first at or past `end_s`."""
    for frame in frames:
        item = convert(frame)
        if item is None:
            continue
        if end_s is not None and item.video_t_s >= end_s - _EPS_S:
            return
        yield item


def _prepend(first: _Decoded, rest: Iterator[_Decoded]) -> Iterator[_Decoded]:
    yield first
    yield from rest


def _nominal_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _header_duration_s(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The video's length in seconds as its header states it (stream, else container), or None.

    Measured from the stream's first timestamp, like `Frame.t_s`, so that it is comparable with them.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        start_s = container.start_time / 1e6 if container.start_time else 0.0
        stream_start_s = (
            float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else start_s
        )
        return max(0.0, container.duration / 1e6 - (stream_start_s - start_s))
    return None


def _stream_duration_s(stream: av.video.stream.VideoStream) -> str:
    if stream.duration and stream.time_base:
        return f"{float(stream.duration * stream.time_base):.3f}"
    duration = getattr(stream.container, "duration", None)  # the base Container type does not declare it
    if duration:
        return f"{duration / 1e6:.3f}"
    return "of unknown length"


def _truncation_problem(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    last_t_s: float | None,
    decoded: int,
    fps: float,
    start_s: float,
) -> str | None:
    """Say why a file that ended cleanly is nonetheless cut short, or None when it is complete.

    FFmpeg often reports a cut-off file as a normal end of stream (MKV, fragmented MP4), so the end is
    checked against what the header promised: the frame count, and the duration.
    """
    if last_t_s is None:
        return None
    if stream.frames and start_s == 0 and decoded < stream.frames:
        return f"truncated: header promises {stream.frames} frames, only {decoded} decoded (ends at {last_t_s:.3f} s)"
    frame_s = 1.0 / fps if fps > 0 else 0.1
    expected_s: float | None = None
    if stream.duration and stream.time_base:
        expected_s = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        expected_s = container.duration / 1e6
    # The last frame starts one frame before the end; allow two more frames of container round-off.
    if expected_s is not None and last_t_s + 3 * frame_s < expected_s:
        return f"truncated: header says {expected_s:.3f} s, frames end at {last_t_s:.3f} s"
    return None


class BackgroundDecode:
    """Frames of a `VideoFileSource` decoded in a child process and handed over in shared memory.

    Why not a thread: PyAV releases the GIL around each FFmpeg call, and a decode thread then waits to
    take it back while the preprocessor runs Python; with one decoder thread the two barely overlap
    (measured: process CPU / wall 0.9 on two cores, no faster than decoding in line). A child process
    has a GIL of its own. It decodes into a ring of `slots` frame buffers (I420 planes packed, or BGR)
    and writes (slot, t_s, index, shape) records to a pipe; a slot is handed back once the consumer has
    moved two frames on, because the preprocessor's tracker may still read the previous frame's Y
    plane. The child is a plain `python -c` running `worker_main` (not multiprocessing, whose spawn
    re-runs the caller's main script), started at construction so its start-up overlaps the caller's.
    """

    def __init__(self, source: VideoFileSource, slots: int = 12) -> None:
        info = source.info
        self._source = source
        self._slot_bytes = info.width * info.height * 3  # room for BGR, the larger of the two layouts
        self._shm = SharedMemory(create=True, size=max(1, slots * self._slot_bytes))
        command = {
            "path": str(source.path),
            "start_s": source.start_s,
            "duration_s": source.duration_s,
            "yuv": source.yuv,
            # One decoder thread: the child has one core, the preprocessor the other; FFmpeg's frame
            # threads (one per core and one) would take turns with the preprocessor on its own core.
            "decoder_threads": 1,
            "shm": self._shm.name,
            "slot_bytes": self._slot_bytes,
            "slots": slots,
        }
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from capture.video import worker_main; worker_main()",
                json.dumps(command),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            # The child imports `capture` the way this process did, installed or from a source tree.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)},
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._free, self._ready = self._process.stdin, self._process.stdout
        self._held: list[int] = []
        self._done = False
        self._delivered = 0
        self._in_line: Iterator[Frame] | None = None

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._in_line is not None:
            return next(self._in_line)
        if self._done:
            raise StopIteration
        try:
            while len(self._held) > 1:  # the consumer is done with all but the last frame it was given
                self._free.write(_SLOT.pack(self._held.pop(0)))
            record = _read_exactly(self._ready, _RECORD.size)
        except (OSError, EOFError):
            self.close()
            if self._delivered == 0:
                # The child could not start (its stderr says why): decode here instead.
                self._in_line = iter(self._source)
                return next(self._in_line)
            raise VideoFileError(str(self._source.path), "the decoding process ended unexpectedly") from None
        kind, slot, t_s, index, height, width, channels, text_bytes = _RECORD.unpack(record)
        if kind != _I420 and kind != _BGR:
            text = _read_exactly(self._ready, text_bytes).decode() if text_bytes else ""
            if kind == _END:
                self._source._dropped = index
            self.close()
            if kind == _VIDEO_ERROR:
                path, _, problem = text.partition("\0")
                raise VideoFileError(path, problem)
            if kind == _ERROR:
                raise RuntimeError(f"decoding {self._source.path} failed: {text}")
            raise StopIteration
        self._held.append(slot)
        self._delivered += 1
        buffer: np.ndarray = np.ndarray((self._slot_bytes,), np.uint8, self._shm.buf, slot * self._slot_bytes)
        if kind == _BGR:
            return Frame(buffer[: height * width * channels].reshape(height, width, channels), t_s, index)
        luma, chroma = width * height, (width // 2) * (height // 2)
        y = buffer[:luma].reshape(height, width)
        u = buffer[luma : luma + chroma].reshape(height // 2, width // 2)
        v = buffer[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2)
        return YuvFrame(t_s=t_s, index=index, planes=I420Planes(y, u, v))

    def close(self) -> None:
        """Stop the child and release the shared memory (frames still referenced keep their mapping)."""
        if self._done:
            return
        self._done = True
        for stream in (self._free, self._ready):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=2.0)
        with contextlib.suppress(BufferError):  # a frame handed out still views it: it goes with the view
            self._shm.close()
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()

    def __del__(self) -> None:
        self.close()


# Child -> parent records: kind, slot, t_s, index, height, width, channels, bytes of text that follow.
_RECORD = struct.Struct("<bidqiiii")
_SLOT = struct.Struct("<i")  # parent -> child: a slot free again
_I420, _BGR, _END, _VIDEO_ERROR, _ERROR = range(5)


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the decoding process closed its pipe")
        data += chunk
    return data


def _decode_worker(command: dict[str, Any]) -> None:
    """The child of `BackgroundDecode`: decode, copy each frame into a free slot, say where it is."""
    from multiprocessing import resource_tracker

    shm = SharedMemory(name=command["shm"])
    # Attaching registers the block with this process's tracker, which would unlink it at exit; the
    # parent owns it.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    slots, slot_bytes = int(command["slots"]), int(command["slot_bytes"])
    ring: np.ndarray = np.ndarray((slots, slot_bytes), np.uint8, shm.buf)
    out, free = sys.stdout.buffer, sys.stdin.buffer
    available = list(range(slots))

    def send(
        kind: int,
        slot: int = 0,
        t_s: float = 0.0,
        index: int = 0,
        shape: tuple[int, ...] = (0, 0, 0),
        text: str = "",
    ) -> None:
        payload = text.encode()
        out.write(_RECORD.pack(kind, slot, t_s, index, *shape, len(payload)) + payload)
        out.flush()

    try:
        with VideoFileSource(
            command["path"],
            start_s=command["start_s"],
            duration_s=command["duration_s"],
            yuv=command["yuv"],
            decoder_threads=command["decoder_threads"],
        ) as source:
            for frame in source:
                if not available:
                    available.append(_SLOT.unpack(_read_exactly(free, _SLOT.size))[0])
                slot = available.pop()
                planes = getattr(frame, "planes", None)
                if isinstance(planes, I420Planes):
                    height, width = planes.height, planes.width
                    luma, chroma = width * height, (width // 2) * (height // 2)
                    ring[slot, :luma].reshape(height, width)[:] = planes.y
                    ring[slot, luma : luma + chroma].reshape(height // 2, width // 2)[:] = planes.u
                    ring[slot, luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2)[:] = (
                        planes.v
                    )
                    send(_I420, slot, frame.t_s, frame.index, (height, width, 1))
                else:
                    image = frame.image
                    ring[slot, : image.size] = image.reshape(-1)
                    send(_BGR, slot, frame.t_s, frame.index, image.shape)
            send(_END, index=source.dropped)
    except (EOFError, BrokenPipeError):  # the consumer stopped early
        pass
    except VideoFileError as exc:
        send(_VIDEO_ERROR, text=f"{exc.path}\0{exc.problem}")
    except Exception as exc:
        send(_ERROR, text=repr(exc))
    finally:
        del ring
        shm.close()


def worker_main() -> None:
    """Entry point of the decoding child (`BackgroundDecode`): the command is JSON in argv[1]."""
    _decode_worker(json.loads(sys.argv[1]))
