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
