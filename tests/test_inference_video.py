"""Inference on rendered videos replayed through capture and preprocess: confidence must track the error.

Trace-level tests (test_inference.py) cannot show what a real video chain does to the pulse: H.264
quantisation removes most of a 0.5 % skin-colour modulation and turns beat timing into noise. These
tests replay the shared 30 s lossless face video and one lossy 20 s render and check that the engine's
confidences say so.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from capture import open_source
from capture.synthetic import SyntheticTruth
from preprocess import PreprocessConfig, process
from server.inference import InferenceResult, infer
from tests.conftest import RenderedVideo

pytestmark = pytest.mark.slow

HRV_RELIABLE = 0.3
SDNN_TOLERANCE_MS = 20.0


def _replay(video: RenderedVideo) -> tuple[InferenceResult, SyntheticTruth]:
    path, truth = video
    with open_source(path) as source:
        m = process(source, PreprocessConfig(source="video", include_patches=False))
    return infer(m), truth


@pytest.fixture(scope="module")
def lossless(face_video: RenderedVideo) -> tuple[InferenceResult, SyntheticTruth]:
    return _replay(face_video)


@pytest.fixture(scope="module")
def lossy(render_video: Callable[..., RenderedVideo]) -> tuple[InferenceResult, SyntheticTruth]:
    return _replay(render_video(duration_s=20.0, crf=23))


def _hrv_claim_is_honest(result: InferenceResult, truth: SyntheticTruth) -> None:
    """An HRV more than 20 ms off must not be presented as reliable."""
    error_ms = abs(result.vitals["hrv"] - truth.sdnn_ms)
    if error_ms > SDNN_TOLERANCE_MS:
        assert result.quality["confidence"]["hrv"] < HRV_RELIABLE, (error_ms, result.quality["confidence"])
        assert result.quality["reliable"]["hrv"] is False


def test_lossless_video_is_measured_with_high_confidence(lossless) -> None:  # type: ignore[no-untyped-def]
    result, truth = lossless
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    assert result.vitals["confidence"] >= 0.8
    assert abs(result.vitals["respiratory_rate"] - truth.rr_bpm) <= 2.0
    assert abs(result.vitals["hrv"] - truth.sdnn_ms) <= 15.0
    assert result.quality["confidence"]["hrv"] >= 0.5
    _hrv_claim_is_honest(result, truth)


def test_compression_lowers_confidence_and_hrv_is_not_overclaimed(lossless, lossy) -> None:  # type: ignore[no-untyped-def]
    """crf 23 keeps the HR findable but quantises beat timing away: every confidence must fall, and an
    SDNN that is off by more than 20 ms must carry an HRV confidence under 0.3."""
    clean, _ = lossless
    compressed, truth = lossy
    c_clean, c_lossy = clean.quality["confidence"], compressed.quality["confidence"]
    assert compressed.vitals["confidence"] < clean.vitals["confidence"]
    assert c_lossy["hrv"] < c_clean["hrv"]
    _hrv_claim_is_honest(compressed, truth)
    if abs(compressed.vitals["heart_rate"] - truth.hr_bpm) > 5.0:
        assert compressed.vitals["confidence"] < HRV_RELIABLE


# Fast heart rates on webcam H.264 (20 s, pulse amplitude 0.8 %): four renders judged together, because
# one render's confidence can sit on the "reliable" threshold and move with any small change to the trace
# (benchmarks/README.md, the landmark cadence): seed 72's 146 bpm measured 0.55 at a 16-frame landmark
# maximum and 0.35 at 64, with the same heart rate, while the other renders rose 0.01-0.05.
FAST_RENDERS = ((128.0, "astronaut", 71), (146.0, "grace_hopper", 72), (146.0, "astronaut", 73),
                (138.0, "grace_hopper", 74))  # fmt: skip


@pytest.fixture(scope="module")
def fast_readings(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[InferenceResult, SyntheticTruth]]:
    from capture.synthetic import render_preset

    folder = tmp_path_factory.mktemp("fast")
    readings = []
    for hr_bpm, face, seed in FAST_RENDERS:
        video = folder / f"{hr_bpm:g}-{face}-{seed}.mp4"
        truth = render_preset(
            video, "webcam", duration_s=20.0, face=face, hr_bpm=hr_bpm, pulse_amplitude=0.008, seed=seed
        )
        readings.append(_replay((video, truth)))
    return readings


def test_a_fast_heart_rate_on_h264_is_measured_not_halved(
    fast_readings: list[tuple[InferenceResult, SyntheticTruth]],
) -> None:
    """Heart rates of 100-150 bpm are normal (exercise, stress, children): on webcam H.264 with natural
    head motion the engine must report them, not their half, and not call the half a trap."""
    for result, truth in fast_readings:
        assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 3.0, result.quality["hr_track_bpm"]
        assert result.quality["harmonic_corrected"] is False


def test_fast_heart_rates_on_h264_are_mostly_called_reliable(
    fast_readings: list[tuple[InferenceResult, SyntheticTruth]],
) -> None:
    """The readings above are right, so the confidence must say so for most of them (a correct reading
    called unreliable is the failure this project first set out to fix), on average well above 0.5."""
    confidences = [result.quality["confidence"]["heart_rate"] for result, _ in fast_readings]
    reliable = [result.quality["reliable"]["heart_rate"] for result, _ in fast_readings]
    assert sum(reliable) >= len(fast_readings) - 1, confidences
    assert sum(confidences) / len(confidences) >= 0.65, confidences
