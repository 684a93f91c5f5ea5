"""The inference pipeline: `analyze` computes every signal behind the vitals, `infer` turns it into the API.

One code path: the HTML report plots the `Analysis` arrays and the server reports the numbers derived
from the same object, so what the user sees on the chart is what produced the number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from contract.limits import MIN_USABLE_S, RELIABLE_CONFIDENCE
from contract.tensor import VIDEO_BITS_PER_PIXEL_KEY, Measurement
from server.inference import confidence as conf
from server.inference import pulse as hr_pulse
from server.inference.conditioning import Conditioned, condition
from server.inference.errors import InferenceFailed
from server.inference.hrv import MIN_CLEAN_BEATS, Beats, detect_beats, systolic_up
from server.inference.priors import (
    blood_pressure_prior,
    ratio_of_ratios,
    spo2_calibration_from_env,
    spo2_estimate,
)
from server.inference.respiration import Respiration, RespSource, beat_series, fuse, source_from_signal
from server.inference.signals import welch_psd

ENGINE_VERSION: Final = "1"
HRV_PRIOR_MS: Final = 45.0
SPECTRUM_LOW_BPM: Final = 30.0
SPECTRUM_HIGH_BPM: Final = 240.0
# Below this many compressed bits per pixel (H.264 re-encodes of datasets sit at 0.01-0.02, an ordinary
# 720p webcam stream at ~0.1, MJPG at ~0.6) the codec visibly eats the pulse: COMPRESSED_VIDEO.
COMPRESSED_BITS_PER_PIXEL: Final = 0.05
MIN_MEASURED_CONFIDENCE: Final = 0.001
# Beat-timing and clean-share factors at which beats define the mean heart rate (`refine_with_beats`).
BEATS_TRUSTED_FACTOR: Final = 0.8
# Welch segment of the whole-record spectrum (report, harmonic test, HRV evidence).
WELCH_SEGMENT_S: Final = 15.0


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """Everything behind the vitals, as arrays for plotting (times on the measurement's `t_s` clock).

    Pulse: `t_s` [N] uniform grid at `fs_hz`, `pulse` [N] fused waveform (unit std, 0 where no data),
    `pulse_valid` [N]. Spectrum: `freq_bpm` [F], `power` [F] (fused, normalised, motion-attenuated),
    `motion_gain` [F] (1 = no attenuation), peak `hr_bpm` with `snr_db`. Track: `track_t_s`, `track_bpm`,
    `track_snr_db` (10 s windows, 2 s hop). Breathing: `breathing` [N] (the best agreeing source,
    band-passed, on `t_s`), `rr_bpm`, `rr_sources` (name, breaths/min, quality). Beats: `beat_t_s`,
    `ibi_ms`, `ibi_accepted`, `sdnn_ms`, `rmssd_ms` (NaN when too few clean beats). Per region (order of
    `regions`): SNR at the consensus track (dB, NaN if unused), own peak (bpm), projection ("pos"),
    fusion weight, coverage. `confidence` holds 0..1 for heart_rate, respiratory_rate, hrv; `hr_factors` and `hrv_factors`
    the terms they are products of; `beat_template_r` (beat-to-mean-beat correlation) and
    `beat_jitter_ms` (the beat-timing error it predicts) are the HRV timing evidence.
    """

    t_s: np.ndarray
    fs_hz: float
    pulse: np.ndarray
    pulse_valid: np.ndarray
    freq_bpm: np.ndarray
    power: np.ndarray
    motion_gain: np.ndarray
    hr_bpm: float
    hr_method: str
    spectral_hr_bpm: float
    snr_db: float
    harmonic_corrected: bool
    track_t_s: np.ndarray
    track_bpm: np.ndarray
    track_snr_db: np.ndarray
    track_support: float
    whole_snr_db: float
    breathing: np.ndarray
    rr_bpm: float
    rr_sources: tuple[tuple[str, float, float], ...]
    rr_agreeing: tuple[str, ...]
    beat_t_s: np.ndarray
    ibi_ms: np.ndarray
    ibi_accepted: np.ndarray
    sdnn_ms: float
    rmssd_ms: float
    regions: tuple[str, ...]
    region_snr_db: np.ndarray
    region_hr_bpm: np.ndarray
    region_method: tuple[str, ...]
    region_weight: np.ndarray
    region_coverage: np.ndarray
    ratio_of_ratios: float
    coverage: float
    duration_s: float
    usable_s: float
    fps_hz: float
    frame_jitter_ms: float
    motion_level: float
    confidence: dict[str, float]
    hr_factors: dict[str, float]
    hrv_factors: dict[str, float]
    beat_jitter_ms: float
    beat_template_r: float
    video_bits_per_pixel: float | None = None


def analyze(measurement: Measurement, *, min_usable_s: float = MIN_USABLE_S) -> Analysis:
    """Run the whole pipeline on a measurement; raise InferenceFailed (any unexpected error → INTERNAL).

    `min_usable_s` is the product's minimum; only dataset evaluation of short windows lowers it.
    """
    try:
        with np.errstate(all="ignore"):
            return _analyze(measurement, min_usable_s)
    except InferenceFailed:
        raise
    except Exception as exc:
        raise InferenceFailed("INTERNAL", f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class HeartRateStage:
    """The heart-rate stage: region fusion, the track and the whole-record estimate (see `pulse`)."""

    fusion: hr_pulse.RegionFusion
    spec: hr_pulse.Spectrogram
    fused: np.ndarray  # [W, F] fused, motion-attenuated window spectra
    track_hz: np.ndarray  # [W]
    track_snr: np.ndarray  # [W] linear
    track_score: float  # the track's Viterbi log-likelihood
    hr_hz: float
    harmonic_corrected: bool
    pulse: np.ndarray  # [N] fused waveform, unit std, systole up
    pulse_valid: np.ndarray  # [N]
    f_hz: np.ndarray  # whole-record fused spectrum (Welch), for the harmonic test and the report
    power: np.ndarray
    gain: np.ndarray  # motion gain on f_hz
    motion_level: float
    split_half: float | None  # coherence of the face halves along the track (None without both halves)
    split_half_held: float | None  # the same at the track predicted from disjoint windows


SPLIT_HALVES: Final = ("face_left", "face_right")


def heart_rate_stage(cond: Conditioned, region_names: tuple[str, ...]) -> HeartRateStage:
    """POS per region → spectrogram → the face region's track → whole-record peak, and the halves' test."""
    fs = cond.fs_hz
    pulses = hr_pulse.region_pulses(cond.rgb, cond.valid, fs)
    usable = hr_pulse.usable_regions(pulses, cond.region_coverage)
    if not usable.any():
        raise InferenceFailed("NO_FACE", "no region carries a usable skin trace")
    spec = hr_pulse.spectrogram(pulses, cond.t_s, fs, hr_pulse.track_window_s(cond.duration_s))
    gain_track, motion_level = hr_pulse.motion_attenuation(
        cond.face_box, cond.box_valid, fs, spec.f_hz, WELCH_SEGMENT_S
    )
    weights = hr_pulse.primary_weights(region_names, usable)
    fused = hr_pulse.fused_spectrogram(spec, weights, gain_track)
    track_hz, track_score = hr_pulse.viterbi(fused, spec.f_hz)
    pulse_valid = np.any(cond.valid & (weights > 0)[:, None], axis=0)
    fused_pulse = systolic_up(hr_pulse.aligned_sum(pulses, weights), pulse_valid)

    f_hz, power = welch_psd(fused_pulse, fs, WELCH_SEGMENT_S)
    gain = hr_pulse.motion_attenuation(cond.face_box, cond.box_valid, fs, f_hz, WELCH_SEGMENT_S)[0]
    whole = hr_pulse.normalised(power, f_hz) * gain
    corrected = hr_pulse.is_harmonic_trap(f_hz, whole, float(np.median(track_hz)), fused_pulse, fs)
    if corrected:
        track_hz, track_score = hr_pulse.viterbi(fused, spec.f_hz, high_hz=0.75 * float(np.median(track_hz)))
    hr_hz = hr_pulse.record_peak_hz(np.where(pulse_valid, fused_pulse, 0.0), fs, track_hz)
    fusion = hr_pulse.region_diagnostics(spec, usable, weights, track_hz)
    split_half = split_half_held = None
    if all(name in region_names for name in SPLIT_HALVES):
        left, right = (region_names.index(name) for name in SPLIT_HALVES)
        if usable[left] and usable[right]:
            split_half = hr_pulse.split_half_coherence(
                pulses[left], pulses[right], fs, track_hz, spec.window_s
            )
            held = hr_pulse.held_out_track(track_hz, spec.window_s)
            if np.isfinite(held).all():
                split_half_held = hr_pulse.split_half_coherence(
                    pulses[left], pulses[right], fs, held, spec.window_s
                )
    return HeartRateStage(
        fusion=fusion,
        spec=spec,
        fused=fused,
        track_hz=track_hz,
        track_snr=hr_pulse.snr_at_track(fused, spec.f_hz, track_hz),
        track_score=track_score,
        hr_hz=hr_hz,
        harmonic_corrected=corrected,
        pulse=fused_pulse,
        pulse_valid=pulse_valid,
        f_hz=f_hz,
        power=whole,
        gain=gain,
        motion_level=motion_level,
        split_half=split_half,
        split_half_held=split_half_held,
    )


def _analyze(m: Measurement, min_usable_s: float) -> Analysis:
    cond = condition(m, min_usable_s)
    fs = cond.fs_hz
    heart = heart_rate_stage(cond, tuple(m.meta.regions))
    weights = heart.fusion.weights
    hr_bpm_spectral = heart.hr_hz * 60.0
    snr_db = hr_pulse.to_db(float(np.mean(heart.track_snr)))
    support = hr_pulse.track_support(heart.fused, heart.spec.f_hz, heart.track_hz)
    margin = hr_pulse.track_margin(heart.fused, heart.spec.f_hz, heart.track_hz, heart.track_score)
    sharpness = hr_pulse.track_sharpness_db(heart.fused, heart.spec.f_hz, heart.track_hz)
    roughness = hr_pulse.track_roughness_bpm(heart.track_hz)
    whole_snr = hr_pulse.whole_snr_db(heart.f_hz, heart.power, heart.hr_hz)
    measured = np.isfinite(heart.fusion.hr_bpm)
    hr_conf = conf.heart_rate_confidence(
        snr_db=snr_db,
        support=support,
        margin=margin,
        sharpness_db=sharpness,
        roughness_bpm=roughness,
        split_half=heart.split_half,
        split_half_held=heart.split_half_held,
        whole_snr_db=whole_snr,
        # Regions outside the fusion still read their own peak: how many of them agree is a diagnostic.
        agreement=conf.closeness(heart.fusion.hr_bpm, hr_bpm_spectral, measured.astype(float))
        if measured.sum() > 1
        else 1.0,
        motion_level=heart.motion_level,
        coverage=cond.coverage,
    )

    beats = detect_beats(heart.pulse, heart.pulse_valid, cond.t_s, hr_bpm_spectral)
    resp = _respiration(cond, weights, beats, hr_conf.value)
    expected_beats = cond.usable_s * hr_bpm_spectral / 60.0 - 1.0
    clean_ibi_ms = beats.ibi_ms[beats.accepted]
    hrv_conf = conf.hrv_confidence(
        hr_confidence=hr_conf.value,
        snr_db=whole_snr,
        n_clean=beats.n_clean,
        n_expected=expected_beats,
        beat_hr_bpm=60000.0 / float(np.mean(clean_ibi_ms)) if clean_ibi_ms.size else float("nan"),
        spectral_hr_bpm=hr_bpm_spectral,
        template_r=beats.template_r,
        min_clean=MIN_CLEAN_BEATS,
    )
    hrv_value = hrv_conf.value if math.isfinite(beats.sdnn_ms) else 0.0
    rr_conf = resp.confidence * conf.coverage_factor(cond.coverage)
    hr_bpm, hr_method = refine_with_beats(hr_bpm_spectral, beats, hrv_conf, hr_conf.value)

    breathing = np.zeros_like(cond.t_s)
    if resp.best is not None:
        breathing = np.interp(cond.t_s, resp.best.t_s, resp.best.signal)
    f_hz, power = heart.f_hz, heart.power
    shown = (f_hz * 60.0 >= SPECTRUM_LOW_BPM) & (f_hz * 60.0 <= SPECTRUM_HIGH_BPM)
    return Analysis(
        t_s=cond.t_s,
        fs_hz=fs,
        pulse=heart.pulse,
        pulse_valid=heart.pulse_valid,
        freq_bpm=f_hz[shown] * 60.0,
        power=power[shown] / max(float(power[shown].max()), 1e-300),
        motion_gain=heart.gain[shown],
        hr_bpm=hr_bpm,
        hr_method=hr_method,
        spectral_hr_bpm=hr_bpm_spectral,
        snr_db=snr_db,
        harmonic_corrected=heart.harmonic_corrected,
        track_t_s=heart.spec.t_s,
        track_bpm=heart.track_hz * 60.0,
        track_snr_db=10.0 * np.log10(np.maximum(heart.track_snr, 1e-3)),
        track_support=support,
        whole_snr_db=whole_snr,
        breathing=breathing,
        rr_bpm=float(np.clip(resp.rr_bpm, 6.0, 30.0)),
        rr_sources=tuple((s.name, s.rr_bpm, s.quality) for s in resp.sources),
        rr_agreeing=resp.agreeing,
        beat_t_s=beats.t_s,
        ibi_ms=beats.ibi_ms,
        ibi_accepted=beats.accepted,
        sdnn_ms=beats.sdnn_ms,
        rmssd_ms=beats.rmssd_ms,
        regions=tuple(m.meta.regions),
        region_snr_db=heart.fusion.snr_db,
        region_hr_bpm=heart.fusion.hr_bpm,
        region_method=tuple("pos" if w > 0 else "none" for w in weights),
        region_weight=weights,
        region_coverage=cond.region_coverage,
        ratio_of_ratios=ratio_of_ratios(cond.rgb, cond.valid, weights, fs),
        coverage=cond.coverage,
        duration_s=cond.duration_s,
        usable_s=cond.usable_s,
        fps_hz=cond.fps_hz,
        frame_jitter_ms=cond.frame_interval_jitter_ms,
        motion_level=heart.motion_level,
        confidence={"heart_rate": hr_conf.value, "respiratory_rate": rr_conf, "hrv": hrv_value},
        hr_factors=hr_conf.factors,
        hrv_factors={
            "snr": hrv_conf.snr,
            "timing": hrv_conf.timing,
            "share": hrv_conf.share,
            "agreement": hrv_conf.agreement,
            "heart_rate": hrv_conf.heart_rate,
        },
        beat_jitter_ms=hrv_conf.jitter_ms,
        beat_template_r=beats.template_r,
        video_bits_per_pixel=_bits_per_pixel(m),
    )


def _bits_per_pixel(m: Measurement) -> float | None:
    """The replayed video's compressed bits per pixel, when the SDK sent it (tensor metadata)."""
    text = m.extra_metadata.get(VIDEO_BITS_PER_PIXEL_KEY)
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def quality_warnings(a: Analysis) -> list[dict[str, str]]:
    """Conditions the user should know about beside the numbers (codes and advice)."""
    warnings = []
    bpp = a.video_bits_per_pixel
    if bpp is not None and bpp < COMPRESSED_BITS_PER_PIXEL:
        warnings.append(
            {
                "code": "COMPRESSED_VIDEO",
                "message": (
                    f"The video is heavily compressed ({bpp:.3f} bits per pixel): the codec removes much of "
                    "the pulse, so readings are less certain. Measure live from the camera, or record at a "
                    "higher bit rate (or losslessly)."
                ),
            }
        )
    return warnings


def refine_with_beats(
    spectral_bpm: float, beats: Beats, hrv: conf.HrvConfidence, hr_confidence: float
) -> tuple[float, str]:
    """The clinical mean HR, 60 000 / mean clean beat interval, when the beats are trustworthy.

    The spectral peak estimates the mode of the instantaneous rate, which differs from the clinical mean
    HR when the rate varies (a simulated 129 bpm with strong respiratory sinus arrhythmia peaks at 131).
    But beats timed on a noisy wave are off by missed and extra beats: on compressed video this
    refinement moved the estimate 1-1.5 bpm away from both the truth and the contact reference. So it is
    used only when the beat-level evidence says the beats are clean (timing jitter and the share of
    clean beats, `conf.hrv_confidence`'s factors) and the two estimates agree within 3 bpm.
    """
    clean = beats.ibi_ms[beats.accepted]
    trusted = hrv.timing >= BEATS_TRUSTED_FACTOR and hrv.share >= BEATS_TRUSTED_FACTOR
    if not trusted or hr_confidence < RELIABLE_CONFIDENCE or clean.size < MIN_CLEAN_BEATS:
        return spectral_bpm, "spectral"
    beat_bpm = 60000.0 / float(np.mean(clean))
    if abs(beat_bpm - spectral_bpm) > 3.0:
        return spectral_bpm, "spectral"
    return beat_bpm, "beats"


def _respiration(cond: Conditioned, weights: np.ndarray, beats: Beats, hr_confidence: float) -> Respiration:
    """Build the four respiratory sources and fuse them.

    Intensity and face motion do not depend on the pulse; amplitude and interval series do, so their
    quality is scaled by the square root of the pulse confidence (beats found in noise carry no breath).
    """
    fs = cond.fs_hz
    t = cond.t_s
    sources: list[RespSource] = []
    used = weights > 0
    lum = np.zeros_like(t)
    for r in np.flatnonzero(used):
        luminance = cond.rgb[r].mean(axis=1)
        mean = float(luminance[cond.valid[r]].mean())
        lum += weights[r] * np.where(cond.valid[r], luminance / mean - 1.0, 0.0)
    sources.append(source_from_signal("intensity", t, lum / weights.sum(), fs, 1.0))

    if cond.box_valid.mean() >= 0.7:
        box = cond.face_box
        height = float(np.median(box[cond.box_valid, 3]))
        centre_y = (box[:, 1] + box[:, 3] / 2.0) / max(height, 1e-6)
        centre_y = np.where(cond.box_valid, centre_y, float(np.median(centre_y[cond.box_valid])))
        sources.append(source_from_signal("face_motion", t, centre_y, fs, 1.0))

    pulse_weight = math.sqrt(max(hr_confidence, 0.0))
    if beats.t_s.shape[0] >= 8 and beats.t_s[-1] - beats.t_s[0] >= 10.0:
        grid, amp = beat_series(beats.t_s, beats.amplitude, beats.t_s[0], beats.t_s[-1])
        sources.append(source_from_signal("amplitude", grid, amp, 4.0, pulse_weight))
        mid_t = (beats.t_s[1:] + beats.t_s[:-1]) / 2.0
        ok = beats.accepted
        if int(ok.sum()) >= 8:
            grid, ibi = beat_series(mid_t[ok], beats.ibi_ms[ok], mid_t[ok][0], mid_t[ok][-1])
            if grid.shape[0] >= 40:
                sources.append(source_from_signal("interval", grid, ibi, 4.0, pulse_weight))
    return fuse(sources)


def infer(
    measurement: Measurement,
    demographics: Mapping[str, Any] | None = None,
    *,
    spo2_calibration: tuple[float, float] | None = None,
) -> InferenceResult:
    """Vitals in the spec's keys and units plus a JSON-ready `quality` object.

    `spo2_calibration` (A, B) maps the red/blue ratio of ratios to SpO2 = A − B·RoR; when omitted it is
    read from VITALCAM_SPO2_CALIBRATION="A,B", and without either SpO2 is the 97 % prior.
    Raises InferenceFailed; any unexpected error is reported as INTERNAL.
    """
    analysis = analyze(measurement)
    try:
        return _result(analysis, demographics, spo2_calibration or spo2_calibration_from_env())
    except Exception as exc:
        raise InferenceFailed("INTERNAL", f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """`vitals` uses the spec's keys and units; `quality` is the JSON-ready detail behind them."""

    vitals: dict[str, float]
    quality: dict[str, Any]


def _result(
    a: Analysis, demographics: Mapping[str, Any] | None, calibration: tuple[float, float] | None
) -> InferenceResult:
    bp = blood_pressure_prior(demographics)
    spo2 = spo2_estimate(a.ratio_of_ratios, calibration, a.confidence["heart_rate"])
    hrv_measured = math.isfinite(a.sdnn_ms)
    hrv_ms = float(np.clip(a.sdnn_ms, 0.0, 300.0)) if hrv_measured else HRV_PRIOR_MS
    confidences = {
        "heart_rate": a.confidence["heart_rate"],
        "respiratory_rate": a.confidence["respiratory_rate"],
        "hrv": a.confidence["hrv"],
        "spo2": spo2.confidence,
        "systolic_bp": bp.confidence,
        "diastolic_bp": bp.confidence,
    }
    confidences = {k: round(float(np.clip(v, 0.0, 1.0)), 3) for k, v in confidences.items()}
    vitals = {
        "heart_rate": round(a.hr_bpm, 1),
        "respiratory_rate": round(a.rr_bpm, 1),
        "hrv": round(hrv_ms, 1),
        "spo2": round(spo2.spo2_pct, 1),
        "systolic_bp": float(round(bp.systolic_mmhg)),
        "diastolic_bp": float(round(bp.diastolic_mmhg)),
        # The spec reserves confidence 0.0 for fallback vitals (clients test for it), so a measurement,
        # however weak, reports at least the smallest value the API's three decimals can show.
        "confidence": max(confidences["heart_rate"], MIN_MEASURED_CONFIDENCE),
    }
    source = {
        "heart_rate": "measured",
        "respiratory_rate": "measured",
        "hrv": "measured" if hrv_measured else "prior",
        "spo2": "prior" if calibration is None else "measured",
        "systolic_bp": "prior",
        "diastolic_bp": "prior",
    }
    quality: dict[str, Any] = {
        "reason": None,
        "warnings": quality_warnings(a),
        "engine_version": ENGINE_VERSION,
        "confidence": confidences,
        "source": source,
        "reliable": {k: v >= RELIABLE_CONFIDENCE and source[k] == "measured" for k, v in confidences.items()},
        "snr_db": _num(a.snr_db, 2),
        "hr_method": a.hr_method,
        "spectral_hr_bpm": _num(a.spectral_hr_bpm, 1),
        "hr_confidence_factors": {k: _num(v, 3) for k, v in a.hr_factors.items()},
        "harmonic_corrected": bool(a.harmonic_corrected),
        "coverage": _num(a.coverage, 3),
        "usable_s": _num(a.usable_s, 2),
        "duration_s": _num(a.duration_s, 2),
        "fps": _num(a.fps_hz, 2),
        "frame_jitter_ms": _num(a.frame_jitter_ms, 2),
        "motion_level": _num(a.motion_level, 4),
        "regions": {
            name: {
                "snr_db": _num(a.region_snr_db[i], 2),
                "hr_bpm": _num(a.region_hr_bpm[i], 1),
                "method": a.region_method[i],
                "weight": _num(a.region_weight[i], 3),
                "coverage": _num(a.region_coverage[i], 3),
            }
            for i, name in enumerate(a.regions)
        },
        "hr_track_t_s": [_num(t - a.t_s[0], 1) for t in a.track_t_s],
        "hr_track_bpm": [_num(v, 1) for v in a.track_bpm],
        "sdnn_ms": _num(a.sdnn_ms, 1),
        "rmssd_ms": _num(a.rmssd_ms, 1),
        "beats": int(a.beat_t_s.shape[0]),
        "clean_intervals": int(a.ibi_accepted.sum()),
        "hrv_confidence_factors": {k: _num(v, 3) for k, v in a.hrv_factors.items()},
        "beat_template_r": _num(a.beat_template_r, 3),
        "beat_jitter_ms": _num(a.beat_jitter_ms, 1),
        "respiratory_sources": [
            {"name": n, "rr_bpm": _num(rr, 1), "quality": _num(q, 3)} for n, rr, q in a.rr_sources
        ],
        "respiratory_agreeing": list(a.rr_agreeing),
        "ratio_of_ratios": _num(a.ratio_of_ratios, 4),
        "spo2_basis": spo2.basis,
        "bp_basis": bp.basis,
    }
    return InferenceResult(vitals=vitals, quality=quality)


def _num(value: float, digits: int) -> float | None:
    """A plain rounded float for JSON, or None for NaN/inf."""
    v = float(value)
    return round(v, digits) if math.isfinite(v) else None
