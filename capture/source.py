"""The frame-source interface that the camera, stream and video-file sources implement (see `capture.opening`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from capture.frame import Frame, SourceKind


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source delivers: frame size after rotation, nominal fps and where the frames come from.

    `fps` is nominal (container rate or what the camera reports; 0.0 when unknown). Timing downstream must
    use `Frame.t_s`, never index/fps. `requested` holds the camera width/height/fps the caller asked for
    (None values when not asked) so that a mismatch with what was delivered is visible; None for files.

    `duration_s` and `frame_count` say how much a replay will deliver (of the requested segment), so that
    a replay can report progress in percent; both are what the container header states, hence estimates
    (a damaged file may end early). None when unknown, and always for cameras and streams.
    `frame_count` is only set when the header counts the frames of exactly what is replayed.
    `bit_rate_bps` is the compressed video stream's bit rate from the container (None when unknown, and
    for cameras, whose frames arrive uncompressed or as MJPG we do not see).
    """

    width: int
    height: int
    fps: float
    kind: SourceKind
    name: str
    requested: dict[str, Any] | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    bit_rate_bps: float | None = None

    @property
    def bits_per_pixel(self) -> float | None:
        """Compressed bits per pixel per frame: how hard the video was squeezed (None when unknown)."""
        if not self.bit_rate_bps or not self.fps or self.width <= 0 or self.height <= 0:
            return None
        return self.bit_rate_bps / (self.width * self.height * self.fps)


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields `Frame`s with true timestamps; close it (or use `with`) to free the device."""

    @property
    def info(self) -> SourceInfo: ...

    @property
    def dropped(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
