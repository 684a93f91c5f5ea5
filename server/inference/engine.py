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

from preprocess.tensor import Measurement
from server.inference import confidence as conf
from server.inference.conditioning import Conditioned, condition
from server.inference.errors import InferenceFailed
from server.inference.hrv import MIN_CLEAN_BEATS, Beats, detect_beats, systolic_up
from server.inference.priors import (
    blood_pressure_prior,
    ratio_of_ratios,
    spo2_calibration_from_env,
    spo2_estimate,
)
from server.inference.pulse import (
    RegionPulse,
    fused_heart_rate,
    hr_track,
    motion_attenuation,
    normalised,
    region_pulses,
    region_weights,
    welch_segment_s,
)
from server.inference.respiration import Respiration, RespSource, beat_series, fuse, source_from_signal
from server.inference.signals import unit_std

ENGINE_VERSION: Final = "1"
HRV_PRIOR_MS: Final = 45.0
RELIABLE_CONFIDENCE: Final = 0.3
SPECTRUM_LOW_BPM: Final = 30.0
SPECTRUM_HIGH_BPM: Final = 240.0


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """Everything behind the vitals, as arrays for plotting (times on the measurement's `t_s` clock).

    Pulse: `t_s` [N] uniform grid at `fs_hz`, `pulse` [N] fused waveform (unit std, 0 where no data),
    `pulse_valid` [N]. Spectrum: `freq_bpm` [F], `power` [F] (fused, normalised, motion-attenuated),
    `motion_gain` [F] (1 = no attenuation), peak `hr_bpm` with `snr_db`. Track: `track_t_s`, `track_bpm`,
    `track_snr_db` (10 s windows, 2 s hop). Breathing: `breathing` [N] (the best agreeing source,
    band-passed, on `t_s`), `rr_bpm`, `rr_sources` (name, breaths/min, quality). Beats: `beat_t_s`,
    `ibi_ms`, `ibi_accepted`, `sdnn_ms`, `rmssd_ms` (NaN when too few clean beats). Per region (order of
    `regions`): SNR (dB, NaN if absent), own peak (bpm), projection ("pos"/"chrom"), fusion weight,
    coverage. `confidence` holds 0..1 for heart_rate, respiratory_rate, hrv; `hr_factors` and `hrv_factors`
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


def analyze(measurement: Measurement) -> Analysis:
    """Run the whole pipeline on a measurement; raise InferenceFailed (any unexpected error → INTERNAL)."""
    try:
        with np.errstate(all="ignore"):
            return _analyze(measurement)
    except InferenceFailed:
        raise
    except Exception as exc:
        raise InferenceFailed("INTERNAL", f"{type(exc).__name__}: {exc}") from exc


def _analyze(m: Measurement) -> Analysis:
    cond = condition(m)
    fs = cond.fs_hz
    segment_s = welch_segment_s(cond.duration_s)
    f_hz, regions = region_pulses(cond.rgb, cond.valid, fs, segment_s)
    weights = region_weights(regions, cond.region_coverage)
    if not np.any(weights > 0):
        raise InferenceFailed("NO_FACE", "no region carries a usable skin trace")

    gain, motion_level = motion_attenuation(cond.face_box, cond.box_valid, fs, f_hz, segment_s)
    spectra = np.stack([normalised(r.power, f_hz) if r is not None else np.zeros_like(f_hz) for r in regions])
    fused_power = (weights @ spectra) / weights.sum() * gain
    pulses = _aligned_pulses(regions, weights, cond.t_s.shape[0])
    pulse_valid = np.any(cond.valid & (weights > 0)[:, None], axis=0)
    fused_pulse = systolic_up(unit_std(weights @ pulses), pulse_valid)
    hr = fused_heart_rate(f_hz, fused_power, fused_pulse, fs)
    track = hr_track(pulses, weights, cond.valid, cond.t_s, fs, f_hz, gain, hr.hr_bpm)

    region_hr = np.array([r.hr_bpm if r is not None else np.nan for r in regions])
    # A region that locked onto the harmonic of the same pulse agrees with it.
    region_hr_folded = np.where(np.abs(region_hr - 2.0 * hr.hr_bpm) < 6.0, region_hr / 2.0, region_hr)
    hr_conf = conf.heart_rate_confidence(
        snr_db=hr.snr_db,
        consistency=conf.closeness(track.hr_bpm, hr.hr_bpm, track.valid_share),
        agreement=conf.closeness(region_hr_folded, hr.hr_bpm, weights) if np.sum(weights > 0) > 1 else 1.0,
        motion_level=motion_level,
        coverage=cond.coverage,
    )

    beats = detect_beats(fused_pulse, pulse_valid, cond.t_s, hr.hr_bpm)
    resp = _respiration(cond, weights, beats, hr_conf.value)
    expected_beats = cond.usable_s * hr.hr_bpm / 60.0 - 1.0
    clean_ibi_ms = beats.ibi_ms[beats.accepted]
    hrv_conf = conf.hrv_confidence(
        hr_confidence=hr_conf.value,
        snr_db=hr.snr_db,
        n_clean=beats.n_clean,
        n_expected=expected_beats,
        beat_hr_bpm=60000.0 / float(np.mean(clean_ibi_ms)) if clean_ibi_ms.size else float("nan"),
        spectral_hr_bpm=hr.hr_bpm,
        template_r=beats.template_r,
        min_clean=MIN_CLEAN_BEATS,
    )
    hrv_value = hrv_conf.value if math.isfinite(beats.sdnn_ms) else 0.0
    rr_conf = resp.confidence * conf.coverage_factor(cond.coverage)
    hr_bpm, hr_method = _refine_with_beats(hr.hr_bpm, beats, expected_beats, hr_conf.value)

    breathing = np.zeros_like(cond.t_s)
    if resp.best is not None:
        breathing = np.interp(cond.t_s, resp.best.t_s, resp.best.signal)
    shown = (f_hz * 60.0 >= SPECTRUM_LOW_BPM) & (f_hz * 60.0 <= SPECTRUM_HIGH_BPM)
    return Analysis(
        t_s=cond.t_s,
        fs_hz=fs,
        pulse=fused_pulse,
        pulse_valid=pulse_valid,
        freq_bpm=f_hz[shown] * 60.0,
        power=fused_power[shown] / max(float(fused_power[shown].max()), 1e-300),
        motion_gain=gain[shown],
        hr_bpm=hr_bpm,
        hr_method=hr_method,
        spectral_hr_bpm=hr.hr_bpm,
        snr_db=hr.snr_db,
        harmonic_corrected=hr.harmonic_corrected,
        track_t_s=track.t_s,
        track_bpm=track.hr_bpm,
        track_snr_db=track.snr_db,
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
        region_snr_db=np.array([r.snr_db if r is not None else np.nan for r in regions]),
        region_hr_bpm=region_hr,
        region_method=tuple(r.method if r is not None else "none" for r in regions),
        region_weight=weights / weights.sum(),
        region_coverage=cond.region_coverage,
        ratio_of_ratios=ratio_of_ratios(cond.rgb, cond.valid, weights, fs),
        coverage=cond.coverage,
        duration_s=cond.duration_s,
        usable_s=cond.usable_s,
        fps_hz=cond.fps_hz,
        frame_jitter_ms=cond.frame_interval_jitter_ms,
        motion_level=motion_level,
        confidence={"heart_rate": hr_conf.value, "respiratory_rate": rr_conf, "hrv": hrv_value},
        hr_factors={
            "snr": hr_conf.snr,
            "consistency": hr_conf.consistency,
            "agreement": hr_conf.agreement,
            "motion": hr_conf.motion,
            "coverage": hr_conf.coverage,
        },
        hrv_factors={
            "snr": hrv_conf.snr,
            "timing": hrv_conf.timing,
            "share": hrv_conf.share,
            "agreement": hrv_conf.agreement,
            "heart_rate": hrv_conf.heart_rate,
        },
        beat_jitter_ms=hrv_conf.jitter_ms,
        beat_template_r=beats.template_r,
    )


def _refine_with_beats(
    spectral_bpm: float, beats: Beats, expected_beats: float, hr_confidence: float
) -> tuple[float, str]:
    """Mean HR from clean beat intervals when they are trustworthy, else the spectral peak.

    The spectral peak estimates the mean instantaneous rate, mean(60/IBI), which exceeds the clinical
    mean HR, 60/mean(IBI), by about (SDNN/IBI)² (≈ 1 bpm at 130 bpm with 40 ms SDNN), and it is limited by
    spectral resolution. Clean beats covering ≥ 80 % of the record at HR confidence ≥ 0.5 that agree with
    the spectrum within 3 bpm give the clinical definition directly.
    """
    clean = beats.ibi_ms[beats.accepted]
    if hr_confidence < 0.5 or clean.size < 0.8 * expected_beats or clean.size < MIN_CLEAN_BEATS:
        return spectral_bpm, "spectral"
    beat_bpm = 60000.0 / float(np.mean(clean))
    if abs(beat_bpm - spectral_bpm) > 3.0:
        return spectral_bpm, "spectral"
    return beat_bpm, "beats"


def _aligned_pulses(regions: list[RegionPulse | None], weights: np.ndarray, n: int) -> np.ndarray:
    """Region pulses [R, N] with polarity flipped to match the strongest region (CHROM and POS differ)."""
    pulses = np.zeros((len(regions), n))
    ref = int(np.argmax(weights))
    reference = regions[ref]
    for r, reg in enumerate(regions):
        if reg is None or weights[r] <= 0 or reference is None:
            continue
        sign = 1.0 if float(np.dot(reg.pulse, reference.pulse)) >= 0 else -1.0
        pulses[r] = sign * reg.pulse
    return pulses


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
        "confidence": confidences["heart_rate"],
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
