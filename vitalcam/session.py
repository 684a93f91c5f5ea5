"""One measurement end to end: capture → preprocess → transport, reported as a stream of phase events.

The phases follow the commercial SDKs (INITIALIZING → READINESS → CAPTURING → UPLOADING → PROCESSING →
DONE) so that a terminal, a preview window and a Python caller can all follow the same measurement. The
generator is the single code path; the callback form is a thin loop over it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from contract.tensor import Measurement

if TYPE_CHECKING:  # the stages load lazily: importing this module must not start mediapipe or uvicorn
    from capture import Frame, FrameSource
    from capture.preview import Preview
    from preprocess import FrameFeatures, Preprocessor
    from transport import Demographics, Outbox, Result


class Phase(StrEnum):
    INITIALIZING = "INITIALIZING"
    READINESS = "READINESS"
    CAPTURING = "CAPTURING"
    UPLOADING = "UPLOADING"
    PROCESSING = "PROCESSING"
    DONE = "DONE"


class Cancelled(Exception):
    """The person stopped the measurement (q/Esc in the preview, or Ctrl-C)."""


class NotReady(Exception):
    """No usable face appeared within the readiness timeout; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class MeasureOptions:
    """What to measure and where to send it; defaults give a 30 s camera measurement on the embedded backend."""

    source: int | str | Path = 0
    replay: bool = False  # True: `source` is a recorded video replayed as fast as it decodes
    duration_s: float | None = 30.0
    demographics: dict[str, Any] | None = None
    api_url: str | None = None
    api_key: str | None = None
    payload: Literal["full", "traces"] = "full"
    regions: Literal["face", "full-frame"] = "face"
    landmarks: str = "facemesh"  # landmark backend, one of preprocess.face.BACKENDS
    preview: bool = True
    readiness_timeout_s: float = 20.0
    readiness_hold_s: float = 1.0
    outbox_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class QualityTimeline:
    """Per-frame quality, kept for the report's timeline."""

    t_s: np.ndarray
    face_present: np.ndarray
    brightness: np.ndarray
    face_speed: np.ndarray


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything a measurement produced; `result` is the transport Result."""

    result: Result
    measurement: Measurement
    payload_bytes: int
    timeline: QualityTimeline
    api_url: str
    embedded: bool
    dropped_frames: int
    notes: tuple[str, ...] = ()  # what the person should know about the input (a truncated file, ...)


@dataclass(frozen=True, slots=True)
class Event:
    phase: Phase
    percent: float | None = None
    message: str = ""
    hints: tuple[str, ...] = ()
    pulse_bpm: float | None = None
    bytes_sent: int | None = None
    bytes_total: int | None = None
    outcome: Outcome | None = None


EventCallback = Callable[[Event], None]


def measure(options: MeasureOptions, on_event: EventCallback | None = None) -> Outcome:
    """Run a measurement, calling `on_event` for every phase event; returns the outcome or raises.

    A Ctrl-C that lands in `on_event` is handed to the measurement where it stands, so the phase it
    interrupts decides what to keep (an interrupted upload keeps the measurement in the outbox).
    """
    outcome: Outcome | None = None
    events = iter_measurement(options)
    for event in events:
        if on_event is not None:
            try:
                on_event(event)
            except KeyboardInterrupt as interrupt:
                events.throw(interrupt)
                raise
        outcome = event.outcome or outcome
    assert outcome is not None  # iter_measurement always ends with DONE carrying the outcome
    return outcome


def iter_measurement(options: MeasureOptions) -> Generator[Event, None, None]:
    """Yield phase events; the last one is DONE with the outcome. Errors propagate as typed exceptions.

    Blocking, for synchronous callers: the upload runs on a private event loop of this thread, so from
    async code run it in a thread (`await asyncio.to_thread(measure, options)`).
    """
    _refuse_running_loop()
    from capture import open_source
    from capture.preview import open_preview

    yield Event(Phase.INITIALIZING, message="opening the source and warming up")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(_open(open_source, options))
        if options.api_url is not None:  # before the models load and anyone sits still: fails in a second
            yield Event(Phase.INITIALIZING, message=f"checking {options.api_url} and the API key")
            check_backend(options.api_url, options.api_key)
        # Both preprocessors load their models before the first frame is grabbed, so that neither the
        # warm-up nor the switch from readiness to capture makes the grabber drop frames.
        recorder = _preprocessor(options, source.info.kind, source.info.bits_per_pixel)
        stack.callback(recorder.close)
        checker = None if options.replay else _preprocessor(options, "camera")
        if checker is not None:
            stack.callback(checker.close)
        preview = open_preview("vitalcam") if options.preview else None
        if preview is not None:
            stack.callback(preview.close)
        frames = iter(source)
        if checker is not None:
            yield from _readiness(checker, frames, options, preview)
        dropped_before = int(getattr(source, "dropped", 0))
        # A replay may end before the requested duration: progress runs to whichever comes first.
        spans_s = [s for s in (options.duration_s, getattr(source.info, "duration_s", None)) if s]
        span_s = min(spans_s) if spans_s else None
        measurement, timeline, notes = yield from _record(recorder, frames, options, preview, span_s)
        dropped = int(getattr(source, "dropped", 0)) - dropped_before
    yield from _send(measurement, timeline, options, dropped, notes)


def _refuse_running_loop() -> None:
    """Fail before the capture, not after it, when called from a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "iter_measurement() and measure() block; from async code run them in a thread, e.g. "
        "`await asyncio.to_thread(measure, options)`"
    )


def _open(open_source: Callable[..., FrameSource], options: MeasureOptions) -> FrameSource:
    """Replays decode as fast as possible; a video file given as a camera plays in real time like one."""
    if options.replay:
        return open_source(options.source, duration_s=options.duration_s)
    if isinstance(options.source, str | Path) and Path(options.source).is_file():
        from capture import CameraSource

        return CameraSource(str(options.source))
    return open_source(options.source)


def _preprocessor(
    options: MeasureOptions, source_kind: str, bits_per_pixel: float | None = None
) -> Preprocessor:
    from preprocess import PreprocessConfig, Preprocessor

    config = PreprocessConfig(
        regions=options.regions,
        landmarks=options.landmarks,
        include_patches=options.payload == "full",
        source="video" if source_kind == "video" else "camera",
        video_bits_per_pixel=bits_per_pixel,
    )
    return Preprocessor(config)


def _readiness(
    checker: Preprocessor, frames: Iterator[Frame], options: MeasureOptions, preview: Preview | None
) -> Iterator[Event]:
    """Wait until the face is found in usable conditions for `readiness_hold_s`, telling the person what to fix."""
    started = time.monotonic()
    ready_since: float | None = None
    hints: tuple[str, ...] = ()
    for frame in frames:
        features = checker.push(frame)
        hints = tuple(w.message for w in features.warnings)
        _show(preview, frame, features, hints, None, Phase.READINESS)
        now = time.monotonic()
        usable = options.regions == "full-frame" or (features.face_box_px is not None and not hints)
        ready_since = (ready_since or now) if usable else None
        held_s = now - ready_since if ready_since is not None else 0.0
        yield Event(Phase.READINESS, min(100.0, 100.0 * held_s / options.readiness_hold_s), hints=hints)
        if held_s >= options.readiness_hold_s:
            return
        if now - started > options.readiness_timeout_s:
            raise NotReady(
                "no usable face within "
                f"{options.readiness_timeout_s:g} s: " + ("; ".join(hints) or "keep your face in view")
            )
    raise NotReady("the source ended before a usable face was found")


def _record(
    pre: Preprocessor,
    frames: Iterator[Frame],
    options: MeasureOptions,
    preview: Preview | None,
    span_s: float | None,
) -> Generator[Event, None, tuple[Measurement, QualityTimeline, tuple[str, ...]]]:
    """Capture until the duration, the end of a replay, or the last good frame of a damaged file.

    A truncated file is measured on what could be read, and says so; when that is too little, the error
    names the real cause (length, light, truncation) from the frames seen here.
    """
    from capture import VideoFileError
    from preprocess import QualityTooLow
    from preprocess.quality import shortfall_message

    duration_s = options.duration_s
    truncated: str | None = None
    t0: float | None = None
    t_list: list[float] = []
    face: list[bool] = []
    brightness: list[float] = []
    speed: list[float] = []
    last_percent = -1.0
    try:
        for frame in frames:
            t0 = frame.t_s if t0 is None else t0
            elapsed_s = frame.t_s - t0
            if duration_s is not None and elapsed_s > duration_s:
                break
            features = pre.push(frame)
            q = features.quality
            t_list.append(elapsed_s)
            face.append(bool(q.face_present))
            brightness.append(float(q.brightness_luma))
            speed.append(float(q.face_speed_widths_per_s))
            hints = tuple(w.message for w in features.warnings)
            percent = min(100.0, 100.0 * elapsed_s / span_s) if span_s else None
            remaining_s = span_s - elapsed_s if span_s else None
            _show(preview, frame, features, hints, percent, Phase.CAPTURING, remaining_s)
            if percent is None or percent - last_percent >= 0.5 or hints:
                last_percent = percent if percent is not None else last_percent
                yield Event(Phase.CAPTURING, percent, hints=hints, pulse_bpm=features.pulse_bpm_preview)
    except VideoFileError as exc:
        if not t_list:
            raise
        truncated = exc.problem  # the frames before the damage are good: measure them
    seen_s = _seconds_seen(t_list)
    if truncated is None and options.replay and span_s and seen_s + 0.5 < span_s:
        # A cut-off file can end like a complete one; its header still says how long it was meant to be.
        truncated = f"truncated: its header says {span_s:.1f} s"
    try:
        measurement = pre.finish()
    except QualityTooLow as exc:
        dark_luma = pre.config.thresholds.low_light_luma
        dark_share = float(np.mean(np.asarray(brightness) < dark_luma)) if brightness else 0.0
        message = shortfall_message(
            str(exc), seconds_seen=seen_s, dark_share=dark_share, replay=options.replay, truncated=truncated
        )
        raise QualityTooLow(exc.reason, message) from exc
    notes: tuple[str, ...] = ()
    if truncated is not None:
        notes = (f"the file is {truncated}, and only {seen_s:.1f} s could be read: measured those.",)
    timeline = QualityTimeline(
        t_s=np.asarray(t_list),
        face_present=np.asarray(face),
        brightness=np.asarray(brightness),
        face_speed=np.asarray(speed),
    )
    yield Event(Phase.CAPTURING, 100.0, message=f"captured {measurement.n_frames} frames")
    return measurement, timeline, notes


def _seconds_seen(t_s: list[float]) -> float:
    """How long the frames cover, counting the last frame's own interval (30 frames at 30 fps are 1 s)."""
    if len(t_s) < 2:
        return 0.0
    return t_s[-1] - t_s[0] + (t_s[-1] - t_s[0]) / (len(t_s) - 1)


def _show(
    preview: Preview | None,
    frame: Frame,
    features: FrameFeatures,
    hints: tuple[str, ...],
    percent: float | None,
    phase: Phase,
    remaining_s: float | None = None,
) -> None:
    if preview is None or not preview.enabled:
        return
    from capture.preview import Overlay

    overlay = Overlay(
        face_box_px=features.face_box_px,
        polygons=list(features.polygons or []),
        hints=list(hints),
        progress=None if percent is None else percent / 100.0,
        pulse=features.pulse_preview,
        phase=phase.value,
        pulse_bpm=features.pulse_bpm_preview,
        remaining_s=remaining_s,
    )
    if not preview.show(frame.image, overlay):
        raise Cancelled("cancelled from the preview window")


@dataclass(frozen=True, slots=True)
class Backend:
    """Where measurements go: a sessions-API URL and its key; `embedded` for the in-process reference one."""

    url: str
    api_key: str
    embedded: bool

    @property
    def label(self) -> str:
        """How to name it to a person: an embedded backend's ephemeral address means nothing to them."""
        return "the embedded reference backend" if self.embedded else self.url


def open_backend(stack: contextlib.ExitStack, api_url: str | None, api_key: str | None) -> Backend:
    """`api_url` with its key, or an embedded reference backend started on `stack` when it is None."""
    if api_url is None:
        from server import start_embedded

        server = stack.enter_context(start_embedded())
        return Backend(server.base_url, server.api_key, embedded=True)
    if not api_key:
        raise ValueError("an API key is required with --api-url (or VITALCAM_API_KEY)")
    return Backend(api_url.rstrip("/"), api_key, embedded=False)


# Long enough for a server across the internet, short enough that a typo fails before anyone sits still.
PREFLIGHT_TIMEOUT_S = 3.0


def check_backend(api_url: str, api_key: str | None, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Fail now, not after a 30 s capture, when the server cannot be reached or refuses the key.

    One cheap authenticated request (transport's `check()`: no session, no quota); raises its typed
    error (ApiKeyInvalid, NetworkError, UnexpectedResponse for a URL that is no sessions API).
    """
    from transport import AsyncSessionClient

    if not api_key:
        raise ValueError("an API key is required with --api-url (or VITALCAM_API_KEY)")

    async def probe() -> None:
        async with AsyncSessionClient(api_url, api_key, timeout_s=timeout_s) as client:
            await client.check(timeout_s)

    with asyncio.Runner() as runner:
        runner.run(probe())


def _serialise(measurement: Measurement) -> tuple[bytes, Measurement, str]:
    """The payload; a measurement too long to carry its patches is sent as traces rather than lost."""
    import dataclasses

    from contract.tensor import MAX_PAYLOAD_BYTES, TensorFormatError, to_bytes

    try:
        return to_bytes(measurement), measurement, ""
    except TensorFormatError as exc:
        if exc.field != "payload" or measurement.patches is None:
            raise
    traces_only = dataclasses.replace(measurement, patches=None)
    note = f"face patches left out: with them the tensor exceeds {MAX_PAYLOAD_BYTES // 2**20} MiB"
    return to_bytes(traces_only), traces_only, note


def _send(
    measurement: Measurement,
    timeline: QualityTimeline,
    options: MeasureOptions,
    dropped: int,
    notes: tuple[str, ...] = (),
) -> Iterator[Event]:
    from transport import Demographics, Outbox

    payload, measurement, note = _serialise(measurement)
    if note:
        yield Event(Phase.UPLOADING, 0.0, message=note)
    with contextlib.ExitStack() as stack:
        backend = open_backend(stack, options.api_url, options.api_key)
        demographics = Demographics(**options.demographics) if options.demographics else None
        outbox = Outbox(options.outbox_dir)
        yield Event(Phase.UPLOADING, 0.0, bytes_sent=0, bytes_total=len(payload))
        try:
            result = yield from _stream(lambda emit: _upload(backend, payload, demographics, outbox, emit))
        except KeyboardInterrupt:
            # Ctrl-C during the upload: the measurement itself is done, so it is kept for `vitalcam retry`
            # (without a URL for the embedded backend, whose address dies with this process).
            item = outbox.save(payload, None if backend.embedded else backend.url, demographics)
            raise KeyboardInterrupt(
                f"the measurement is kept in {item.payload_path}; `vitalcam retry` uploads it"
            ) from None
        outcome = Outcome(
            result=result,
            measurement=measurement,
            payload_bytes=len(payload),
            timeline=timeline,
            api_url=backend.url,
            embedded=backend.embedded,
            dropped_frames=dropped,
            notes=notes,
        )
    yield Event(Phase.DONE, 100.0, outcome=outcome)


async def _upload(
    backend: Backend,
    payload: bytes,
    demographics: Demographics | None,
    outbox: Outbox,
    emit: Callable[[Event], None],
) -> Result:
    """The async client's `measure()`, with its upload progress and its retries told as events."""
    from transport import AsyncSessionClient, RetryNotice, VitalcamError

    phase, percent = Phase.UPLOADING, 0.0

    def progress(sent: int, total: int) -> None:
        nonlocal phase, percent
        phase, percent = Phase.UPLOADING, 100.0 * sent / max(total, 1)
        emit(Event(phase, percent, bytes_sent=sent, bytes_total=total))
        if sent >= total:
            phase, percent = Phase.PROCESSING, 0.0
            emit(Event(phase, message="the server is computing vitals"))

    def on_retry(notice: RetryNotice) -> None:
        emit(Event(phase, percent, hints=(str(notice),)))

    async with AsyncSessionClient(backend.url, backend.api_key, on_retry=on_retry) as client:
        try:
            return await client.measure(
                payload, demographics, progress=progress, outbox=None if backend.embedded else outbox
            )
        except VitalcamError as exc:
            if backend.embedded and exc.replayable:
                # Kept without a URL: the embedded backend's address dies with this process, and
                # `vitalcam retry` starts a new one for items that name none.
                exc.outbox_path = outbox.save(payload, demographics=demographics, error=exc).payload_path
            raise


T = TypeVar("T")


def _stream(work: Callable[[Callable[[Event], None]], Awaitable[T]]) -> Generator[Event, None, T]:
    """Run `work(emit)` on a private event loop and yield every event it emits while it runs.

    The loop runs only while this generator waits for the next event, so the caller's thread is the only
    one: no worker thread, no queue. Ctrl-C or closing the generator cancels the work (asyncio.Runner
    cancels what is left when it closes), and the client inside closes its connections.
    """
    pending: collections.deque[Event] = collections.deque()
    arrived = asyncio.Event()

    def emit(event: Event) -> None:
        pending.append(event)
        arrived.set()

    with asyncio.Runner() as runner:
        task = runner.get_loop().create_task(_awaited(work(emit)))
        while True:
            runner.run(_until_event_or_done(task, arrived))
            while pending:
                yield pending.popleft()
            if task.done():
                return task.result()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _until_event_or_done(task: asyncio.Task[Any], arrived: asyncio.Event) -> None:
    waiter = asyncio.ensure_future(arrived.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    arrived.clear()


__all__ = [
    "Backend",
    "Cancelled",
    "Event",
    "EventCallback",
    "MeasureOptions",
    "NotReady",
    "Outcome",
    "Phase",
    "QualityTimeline",
    "check_backend",
    "iter_measurement",
    "measure",
    "open_backend",
]
