"""Inference engine on trace-level synthetic measurements with known vitals (tests/simulate_traces.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

import server.inference.engine as engine
from contract.tensor import validate
from contract.vitals import VITALS as VITAL_TABLE
from server.inference import Analysis, InferenceFailed, InferenceResult, analyze, infer
from server.inference.priors import blood_pressure_prior
from tests.simulate_traces import simulate

SPEC_KEYS = {"heart_rate", "respiratory_rate", "hrv", "spo2", "systolic_bp", "diastolic_bp", "confidence"}
VITALS = ("heart_rate", "respiratory_rate", "hrv", "spo2", "systolic_bp", "diastolic_bp")


@pytest.mark.parametrize(("hr_bpm", "seed"), [(50.0, 1), (64.0, 2), (72.0, 3), (95.0, 4), (128.0, 5)])
def test_heart_rate_within_1_bpm_at_good_snr(hr_bpm: float, seed: int) -> None:
    m, truth = simulate(hr_bpm=hr_bpm, noise_std=0.05, seed=seed)
    validate(m)
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    assert result.vitals["confidence"] >= 0.7


@pytest.mark.parametrize(("rr_bpm", "seed"), [(8.0, 1), (12.0, 2), (18.0, 3), (26.0, 4)])
def test_respiratory_rate_within_2(rr_bpm: float, seed: int) -> None:
    m, truth = simulate(rr_bpm=rr_bpm, seed=seed)
    result = infer(m)
    assert abs(result.vitals["respiratory_rate"] - truth.rr_bpm) <= 2.0
    assert result.quality["confidence"]["respiratory_rate"] >= 0.5


def test_respiratory_rate_from_pulse_alone_when_intensity_and_motion_are_silent() -> None:
    """RSA and amplitude modulation carry the breath even with no baseline or head motion."""
    m, truth = simulate(rr_bpm=14.0, resp_intensity=0.0, breathing_motion=0.0, sdnn_ms=50.0, seed=7)
    result = infer(m)
    assert abs(result.vitals["respiratory_rate"] - truth.rr_bpm) <= 2.0


@pytest.mark.parametrize(("sdnn_ms", "hr_bpm", "seed"), [(25.0, 70.0, 1), (40.0, 62.0, 2), (45.0, 64.0, 6)])
def test_sdnn_within_15_ms(sdnn_ms: float, hr_bpm: float, seed: int) -> None:
    m, truth = simulate(sdnn_ms=sdnn_ms, hr_bpm=hr_bpm, noise_std=0.03, seed=seed)
    result = infer(m)
    assert abs(result.vitals["hrv"] - truth.sdnn_ms) <= 15.0
    assert result.quality["source"]["hrv"] == "measured"
    assert result.quality["beats"] >= 15
    assert abs(result.quality["rmssd_ms"] - truth.rmssd_ms) <= 20.0


@pytest.mark.parametrize(("hr_bpm", "seed"), [(45.0, 0), (48.0, 1), (55.0, 2)])
def test_harmonic_trap_reports_the_fundamental(hr_bpm: float, seed: int) -> None:
    """A strong diastolic wave puts more power at 2·HR than at HR; the engine must not double the rate."""
    m, truth = simulate(hr_bpm=hr_bpm, dicrotic=0.8, dicrotic_phase=0.7, noise_std=0.05, seed=seed)
    a = analyze(m)
    band = (a.spectrum.freq_bpm > 1.7 * truth.hr_bpm) & (a.spectrum.freq_bpm < 2.3 * truth.hr_bpm)
    fundamental = (a.spectrum.freq_bpm > 0.8 * truth.hr_bpm) & (a.spectrum.freq_bpm < 1.2 * truth.hr_bpm)
    assert a.spectrum.power[band].max() > a.spectrum.power[fundamental].max()  # the trap is really set
    assert a.heart.harmonic_corrected
    assert abs(a.heart.hr_bpm - truth.hr_bpm) <= 1.5


@pytest.mark.parametrize("hr_bpm", [90.0, 110.0])
def test_genuine_fast_rate_is_not_halved(hr_bpm: float) -> None:
    m, truth = simulate(hr_bpm=hr_bpm, noise_std=0.05, seed=11)
    a = analyze(m)
    assert not a.heart.harmonic_corrected
    assert abs(a.heart.hr_bpm - truth.hr_bpm) <= 1.0


def test_irregular_timestamps_and_dropped_frames() -> None:
    m, truth = simulate(
        jitter_ms=6.0, drop_fraction=0.15, drop_bursts_s=((8.0, 8.4), (20.0, 20.3)), noise_std=0.05, seed=3
    )
    validate(m)
    assert m.n_frames < 0.85 * 900
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    assert abs(result.vitals["respiratory_rate"] - truth.rr_bpm) <= 2.0
    assert result.quality["coverage"] >= 0.95
    assert result.quality["fps"] < 30.0


def test_nominal_fps_is_never_assumed() -> None:
    """A 24 fps camera: the grid follows the timestamps, the HR stays right."""
    m, truth = simulate(fps=24.0, hr_bpm=84.0, noise_std=0.05, seed=4)
    a = analyze(m)
    assert a.pulse.fs_hz == pytest.approx(24.0, rel=1e-6)
    assert abs(a.heart.hr_bpm - truth.hr_bpm) <= 1.0


def test_high_frame_rate_is_decimated() -> None:
    m, truth = simulate(fps=60.0, duration_s=20.0, noise_std=0.05, seed=5)
    a = analyze(m)
    assert a.pulse.fs_hz == pytest.approx(30.0)
    assert abs(a.heart.hr_bpm - truth.hr_bpm) <= 1.0


def test_face_lost_briefly_is_bridged_and_counted() -> None:
    m, truth = simulate(face_lost_s=((10.0, 10.3), (14.0, 16.0)), noise_std=0.05, seed=6)
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    assert 0.9 < result.quality["coverage"] < 0.96  # the 0.3 s gap is bridged, the 2 s gap is not


def test_all_nan_regions_are_ignored() -> None:
    m, truth = simulate(absent_regions=("forehead", "left_cheek"), noise_std=0.05, seed=8)
    validate(m)
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    regions = result.quality["regions"]
    assert regions["forehead"]["snr_db"] is None and regions["forehead"]["weight"] == 0.0
    assert regions["right_cheek"]["snr_db"] is not None  # present: scored, though the face carries the rate
    assert regions["face"]["weight"] == 1.0


def test_without_a_face_region_the_usable_regions_are_averaged() -> None:
    m, truth = simulate(regions=("forehead", "left_cheek", "right_cheek"), noise_std=0.05, seed=12)
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0
    weights = [
        result.quality["regions"][name]["weight"] for name in ("forehead", "left_cheek", "right_cheek")
    ]
    assert weights == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-3)


def test_full_frame_region() -> None:
    m, truth = simulate(regions=("frame",), noise_std=0.03, seed=9)
    result = infer(m)
    assert abs(result.vitals["heart_rate"] - truth.hr_bpm) <= 1.0


def test_head_bob_in_the_pulse_band_is_attenuated() -> None:
    """A 1.6 Hz nod (96 /min) leaks specular light into the colour traces; the face box sees it."""
    m, truth = simulate(hr_bpm=66.0, motion_hz=1.6, motion_amplitude=0.02, noise_std=0.05, seed=10)
    a = analyze(m)
    assert abs(a.heart.hr_bpm - truth.hr_bpm) <= 1.5
    assert a.recording.motion_level > 0.01
    assert a.spectrum.motion_gain[np.argmin(np.abs(a.spectrum.freq_bpm - 96.0))] < 0.2
    assert a.heart.factors["motion"] < 0.9


@pytest.mark.parametrize("seed", range(6))
def test_pure_noise_has_confidence_at_most_0_1(seed: int) -> None:
    """The issue's limit is 0.1; 0.07 keeps a margin for records whose noise happens to line up."""
    m, _ = simulate(with_pulse=False, noise_std=0.3, seed=seed)
    result = infer(m)
    assert result.vitals["confidence"] <= 0.07
    assert result.quality["confidence"]["hrv"] <= 0.1
    assert result.quality["reliable"]["heart_rate"] is False


def test_confidence_falls_as_noise_rises() -> None:
    confidences = []
    for noise in (0.03, 0.15, 0.3, 0.6, 1.2):
        m, _ = simulate(noise_std=noise, seed=21)
        confidences.append(infer(m).vitals["confidence"])
    assert all(b <= a + 0.02 for a, b in itertools_pairwise(confidences)), confidences
    assert confidences[0] > 0.8
    assert confidences[-1] < 0.1


def itertools_pairwise(values: list[float]) -> list[tuple[float, float]]:
    return list(itertools.pairwise(values))


def test_output_contract_and_json() -> None:
    m, _ = simulate(seed=12)
    result = infer(m, {"age": 45, "sex": "F"})
    assert isinstance(result, InferenceResult)
    assert set(result.vitals) == SPEC_KEYS
    assert all(type(v) is float for v in result.vitals.values())
    q = result.quality
    json.dumps(q, allow_nan=False)
    assert q["reason"] is None
    assert set(q["confidence"]) == set(VITALS)
    assert all(0.0 <= v <= 1.0 for v in q["confidence"].values())
    assert q["confidence"]["heart_rate"] == result.vitals["confidence"]
    assert q["source"] == {
        "heart_rate": "measured",
        "respiratory_rate": "measured",
        "hrv": "measured",
        "spo2": "prior",
        "systolic_bp": "prior",
        "diastolic_bp": "prior",
    }
    assert q["confidence"]["spo2"] <= 0.2
    assert q["confidence"]["systolic_bp"] <= 0.1 and q["confidence"]["diastolic_bp"] <= 0.1
    assert result.vitals["spo2"] == 97.0
    assert (result.vitals["systolic_bp"], result.vitals["diastolic_bp"]) == (122.0, 74.0)
    assert 6.0 <= result.vitals["respiratory_rate"] <= 30.0
    for key in (
        "snr_db",
        "coverage",
        "hr_track_bpm",
        "rmssd_ms",
        "beats",
        "ratio_of_ratios",
        "fps",
        "duration_s",
    ):
        assert key in q
    assert q["ratio_of_ratios"] > 0
    assert len(q["respiratory_sources"]) == 4
    assert len(json.dumps(q)) < 4000


def test_analysis_arrays_line_up() -> None:
    m, truth = simulate(seed=13)
    a = analyze(m)
    assert isinstance(a, Analysis)
    pulse, spectrum, heart, beats = a.pulse, a.spectrum, a.heart, a.beats
    n = pulse.t_s.shape[0]
    assert pulse.signal.shape == pulse.valid.shape == a.breathing.signal.shape == (n,)
    assert np.allclose(np.diff(pulse.t_s), 1.0 / pulse.fs_hz)
    assert pulse.t_s[0] == pytest.approx(m.t_s[0])
    assert spectrum.freq_bpm.shape == spectrum.power.shape == spectrum.motion_gain.shape
    assert spectrum.power.max() == pytest.approx(1.0)
    assert abs(spectrum.freq_bpm[np.argmax(spectrum.power)] - heart.hr_bpm) < 1.0
    assert heart.track_t_s.shape == heart.track_bpm.shape and heart.track_bpm.shape[0] >= 10
    assert beats.ibi_ms.shape == beats.accepted.shape == (beats.t_s.shape[0] - 1,)
    # Detected beats line up with the truth (one per true beat, within a fraction of an interval).
    assert abs(beats.t_s.shape[0] - truth.beat_times_s.shape[0]) <= 2
    assert a.regions.names == tuple(m.meta.regions) and a.regions.weight.shape == (len(a.regions.names),)


def test_every_vital_has_one_typed_estimate_in_the_table_order() -> None:
    m, truth = simulate(seed=13)
    result = infer(m)
    assert list(result.estimates) == [v.key for v in VITAL_TABLE]
    for vital in VITAL_TABLE:
        estimate = result.estimates[vital.key]
        assert estimate.unit == vital.unit
        assert 0.0 <= estimate.confidence <= 1.0
        assert result.vitals[vital.key] == estimate.value
        assert result.quality["source"][vital.key] == estimate.source
        assert result.quality["reliable"][vital.key] == estimate.reliable
    assert result.estimates["systolic_bp"].source == "prior" and not result.estimates["systolic_bp"].reliable
    assert result.estimates["heart_rate"].reliable
    assert abs(result.estimates["heart_rate"].value - truth.hr_bpm) <= 1.0
    assert result.vitals["confidence"] == result.confidence


def test_spo2_calibration_moves_spo2_but_caps_confidence(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = simulate(seed=14)
    calibrated = infer(m, spo2_calibration=(110.0, 25.0))
    ror = calibrated.quality["ratio_of_ratios"]
    assert calibrated.vitals["spo2"] == pytest.approx(min(100.0, max(70.0, 110.0 - 25.0 * ror)), abs=0.06)
    assert calibrated.quality["confidence"]["spo2"] <= 0.2
    monkeypatch.setenv("VITALCAM_SPO2_CALIBRATION", "110,25")
    assert infer(m).vitals["spo2"] == calibrated.vitals["spo2"]


@pytest.mark.parametrize(
    ("demographics", "expected"),
    [
        (None, (120.0, 80.0)),
        ({"age": 30, "sex": "M"}, (119.0, 71.0)),
        ({"age": 70, "sex": "F"}, (136.0, 67.0)),
        ({"age": 50}, (123.0, 75.5)),
        ({"age": "not a number"}, (120.0, 80.0)),
        ({"age": 12, "sex": "F"}, (112.0, 66.0)),
    ],
)
def test_blood_pressure_prior_table(demographics: dict | None, expected: tuple[float, float]) -> None:
    prior = blood_pressure_prior(demographics)
    assert (prior.systolic_mmhg, prior.diastolic_mmhg) == expected
    assert prior.confidence <= 0.1


# ---------------------------------------------------------------------------------------------- failures


def _replace(m, **changes):  # type: ignore[no-untyped-def]
    return dataclasses.replace(m, **changes)


def test_fails_no_face() -> None:
    m, _ = simulate(seed=15)
    empty = _replace(
        m,
        rgb=np.full_like(m.rgb, np.nan),
        skin_px=np.zeros_like(m.skin_px),
        face_box=np.full_like(m.face_box, np.nan),
    )
    with pytest.raises(InferenceFailed) as info:
        infer(empty)
    assert info.value.reason == "NO_FACE"


def test_fails_too_short() -> None:
    m, _ = simulate(duration_s=10.0, seed=16)
    with pytest.raises(InferenceFailed) as info:
        infer(m)
    assert info.value.reason == "TOO_SHORT"


def test_fails_too_short_when_usable_time_is_short() -> None:
    m, _ = simulate(duration_s=18.0, face_lost_s=((6.0, 9.5),), seed=17)
    with pytest.raises(InferenceFailed) as info:
        infer(m)
    assert info.value.reason == "TOO_SHORT"


def test_fails_low_coverage() -> None:
    m, _ = simulate(face_lost_s=((5.0, 15.0),), seed=18)
    with pytest.raises(InferenceFailed) as info:
        infer(m)
    assert info.value.reason == "LOW_COVERAGE"


@pytest.mark.parametrize("defect", ["backwards", "nan", "rate"])
def test_fails_invalid_timestamps(defect: str) -> None:
    m, _ = simulate(seed=19)
    t = m.t_s.copy()
    if defect == "backwards":
        t[100] = t[98]
    elif defect == "nan":
        t[5] = math.nan
    else:
        t = t * 100.0  # 0.3 fps: not camera timestamps
    with pytest.raises(InferenceFailed) as info:
        infer(_replace(m, t_s=t))
    assert info.value.reason == "INVALID_TIMESTAMPS"


def test_unexpected_error_is_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    m, _ = simulate(seed=20)

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setattr(engine, "detect_beats", boom)
    with pytest.raises(InferenceFailed) as info:
        infer(m)
    assert info.value.reason == "INTERNAL"
    assert "synthetic bug" in info.value.message
