"""Run vitalcam (and the textbook baseline) over a dataset's recordings, one reading per method and span.

vitalcam runs as the product does, minus the network: capture's replay → the preprocessor → the
reference engine's `analyze`, in-process. Each window is analysed on its own slice of the measurement, so
a 10 s window sees 10 s of data. Recordings are independent, so `jobs` > 1 runs them in worker
processes (spawned, not forked: mediapipe and numba do not survive a fork cleanly).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from contract.limits import MIN_USABLE_S
from contract.tensor import Measurement
from evaluation.datasets import Recording, open_frames
from evaluation.metrics import reference_hr_bpm, snr_at_db, window_spans

VITALCAM: Final = "vitalcam"
# The engine needs 15 s of usable signal for a product measurement; an evaluation window shorter than
# that is analysed with 90 % of its length as the minimum, so 10 s windows can be scored at all.

ProgressFn = Callable[[str, str, float], None]  # (recording, stage, fraction 0..1)


@dataclass(frozen=True, slots=True)
class Reading:
    """One method's heart rate for one span of one recording, beside the reference."""

    recording: str
    window_s: float | None  # None: the whole recording
    start_s: float
    end_s: float
    method: str
    hr_bpm: float  # NaN when the method produced none
    reference_bpm: float
    confidence: float = float("nan")  # vitalcam only
    snr_db: float = float("nan")  # the method's pulse at the reference rate
    note: str = ""  # why there is no reading
    features: dict[str, float] = field(default_factory=dict)  # vitalcam's confidence evidence

    @property
    def error_bpm(self) -> float:
        return self.hr_bpm - self.reference_bpm


@dataclass(frozen=True, slots=True)
class RecordingResult:
    name: str
    readings: tuple[Reading, ...]
    duration_s: float
    failure: str = ""  # set when the recording could not be evaluated at all


def _preprocess(
    recording: Recording, progress: ProgressFn | None
) -> tuple[Measurement | None, np.ndarray, str]:
    """vitalcam's preprocessing of the whole recording: (measurement or None, frame times, failure)."""
    from preprocess import PreprocessConfig, Preprocessor, QualityTooLow

    times: list[float] = []
    with open_frames(recording) as source:
        config = PreprocessConfig(
            source="video", include_patches=False, video_bits_per_pixel=source.info.bits_per_pixel
        )
        pre = Preprocessor(config)
        try:
            total = source.info.frame_count or 0
            for frame in source:
                times.append(frame.t_s)
                pre.add(frame)
                if progress is not None and total and len(times) % 30 == 0:
                    progress(recording.name, VITALCAM, min(1.0, len(times) / total))
            try:
                return pre.finish(), np.asarray(times), ""
            except QualityTooLow as exc:
                return None, np.asarray(times), f"{exc.reason}: {exc}"
        finally:
            pre.close()


def _slice(m: Measurement, start_s: float, end_s: float) -> Measurement:
    t = m.t_s - m.t_s[0]
    keep = (t >= start_s) & (t < end_s)
    return dataclasses.replace(
        m, t_s=m.t_s[keep], rgb=m.rgb[keep], skin_px=m.skin_px[keep], face_box=m.face_box[keep], patches=None
    )


def _reference_spans(
    recording: Recording, frame_t_s: np.ndarray, spans: Sequence[tuple[float, float]]
) -> list[float]:
    ref = recording.reference
    if ref.t_s is None:  # one sample per frame, aligned by index
        n = min(
            frame_t_s.shape[0],
            max(len(ref.ppg) if ref.ppg is not None else 0, len(ref.hr_bpm) if ref.hr_bpm is not None else 0),
        )
        t_s = frame_t_s[:n]
        ppg = ref.ppg[:n] if ref.ppg is not None else None
        hr = ref.hr_bpm[:n] if ref.hr_bpm is not None else None
    else:
        t_s, ppg, hr = ref.t_s, ref.ppg, ref.hr_bpm
    out = []
    for start, end in spans:
        sel = (t_s >= start) & (t_s < end)
        out.append(
            reference_hr_bpm(
                t_s[sel], ppg[sel] if ppg is not None else None, hr[sel] if hr is not None else None
            )
            if sel.sum() >= 2
            else float("nan")
        )
    return out


def _vitalcam_reading(
    m: Measurement, name: str, window_s: float | None, span: tuple[float, float], ref: float
) -> Reading:
    from server.inference import InferenceFailed, analyze

    part = _slice(m, *span)
    length = span[1] - span[0]
    min_usable_s = min(MIN_USABLE_S, 0.9 * length)
    base = Reading(name, window_s, span[0], span[1], VITALCAM, float("nan"), ref)
    if part.n_frames < 2:
        return dataclasses.replace(base, note="NO_FRAMES: no frames in this span")
    try:
        a = analyze(part, min_usable_s=min_usable_s)
    except InferenceFailed as exc:
        return dataclasses.replace(base, note=f"{exc.reason}: {exc.message}")
    features = {k: float(v) for k, v in a.heart.factors.items()}
    return dataclasses.replace(
        base,
        hr_bpm=a.heart.hr_bpm,
        confidence=a.confidence["heart_rate"],
        snr_db=snr_at_db(a.pulse.signal, a.pulse.fs_hz, ref),
        features=features,
    )


def _baseline_readings(
    recording: Recording,
    window_s: float | None,
    spans: Sequence[tuple[float, float]],
    refs: Sequence[float],
    traces: Any,
) -> list[Reading]:
    from benchmarks import baselines

    out = []
    for span, ref in zip(spans, refs, strict=True):
        sel = (traces.t_s >= span[0]) & (traces.t_s < span[1])
        # The textbook trace starts at the first frame its FaceMesh finds a face: it must cover half the
        # span at 5 fps or better, or its 1.6 s windows may not even fit (a face found in the last second).
        t_s = traces.t_s[sel]
        covered_s = float(t_s[-1] - t_s[0]) if t_s.size > 1 else 0.0
        too_little = t_s.size < 0.5 * (span[1] - span[0]) * 5 or covered_s < 0.5 * (span[1] - span[0])
        for method in baselines.METHODS:
            name = f"textbook-{method}"
            if too_little:
                out.append(
                    Reading(recording.name, window_s, *span, name, float("nan"), ref, note="no face found")
                )
                continue
            rgb, fs_hz = baselines.uniform(traces.t_s[sel], traces.rgb[sel])
            pulse = baselines.pulse(method, rgb, fs_hz)
            out.append(
                Reading(
                    recording.name,
                    window_s,
                    *span,
                    name,
                    baselines.periodogram_hr_bpm(pulse, fs_hz),
                    ref,
                    snr_db=snr_at_db(pulse, fs_hz, ref),
                )
            )
    return out


def _textbook_traces(recording: Recording, progress: ProgressFn | None) -> Any:
    from benchmarks import baselines

    def frames() -> Iterator[tuple[float, np.ndarray]]:
        with open_frames(recording) as source:
            total = source.info.frame_count or 0
            for i, frame in enumerate(source):
                if progress is not None and total and i % 30 == 0:
                    progress(recording.name, "textbook", min(1.0, i / total))
                yield frame.t_s, frame.image

    return baselines.face_traces(frames())


def evaluate_recording(
    recording: Recording,
    windows: Sequence[float | None],
    baseline: bool = False,
    progress: ProgressFn | None = None,
) -> RecordingResult:
    """Every reading of one recording: vitalcam per span of each window length, and the baseline's."""
    m, frame_t_s, failure = _preprocess(recording, progress)
    duration_s = float(frame_t_s[-1] - frame_t_s[0]) if frame_t_s.size > 1 else 0.0
    traces = _textbook_traces(recording, progress) if baseline else None
    readings: list[Reading] = []
    for window_s in windows:
        spans = window_spans(duration_s, window_s)
        refs = _reference_spans(recording, frame_t_s, spans)
        for span, ref in zip(spans, refs, strict=True):
            if m is None:
                readings.append(
                    Reading(recording.name, window_s, *span, VITALCAM, float("nan"), ref, note=failure)
                )
            else:
                readings.append(_vitalcam_reading(m, recording.name, window_s, span, ref))
        if traces is not None:
            readings.extend(_baseline_readings(recording, window_s, spans, refs, traces))
    if progress is not None:
        progress(recording.name, "done", 1.0)
    return RecordingResult(recording.name, tuple(readings), duration_s)


def _worker(
    recording: Recording, windows: Sequence[float | None], baseline: bool, events: Any
) -> RecordingResult:
    def progress(name: str, stage: str, fraction: float) -> None:
        events.put((name, stage, fraction))

    return evaluate_recording(recording, windows, baseline, progress)


def evaluate(
    recordings: Sequence[Recording],
    windows: Sequence[float | None],
    *,
    baseline: bool = False,
    jobs: int = 1,
    progress: ProgressFn | None = None,
    on_result: Callable[[RecordingResult], None] | None = None,
) -> list[RecordingResult]:
    """Evaluate every recording (in `jobs` worker processes); a recording that fails is reported, not fatal."""
    results: list[RecordingResult] = []

    def failed(recording: Recording, exc: BaseException) -> RecordingResult:
        return RecordingResult(recording.name, (), 0.0, failure=f"{type(exc).__name__}: {exc}")

    def finish(result: RecordingResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if jobs <= 1 or len(recordings) <= 1:
        for recording in recordings:
            try:
                finish(evaluate_recording(recording, windows, baseline, progress))
            except Exception as exc:
                finish(failed(recording, exc))
        return results
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        events = manager.Queue()
        stop = threading.Event()

        def relay() -> None:
            while not stop.is_set():
                try:
                    event = events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if progress is not None:
                    progress(*event)

        relay_thread = threading.Thread(target=relay, name="evaluate-progress", daemon=True)
        relay_thread.start()
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {pool.submit(_worker, r, windows, baseline, events): r for r in recordings}
                for future in as_completed(futures):
                    try:
                        finish(future.result())
                    except Exception as exc:
                        finish(failed(futures[future], exc))
        finally:
            stop.set()
            relay_thread.join(timeout=1.0)
    return results
