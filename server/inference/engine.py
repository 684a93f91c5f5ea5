"""The inference pipeline: `analyze` computes every signal behind the vitals, `infer` turns it into the API.

One code path: the HTML report plots the `Analysis` arrays and the server reports the numbers derived
from the same object, so what the user sees on the chart is what produced the number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from contract.limits import MIN_USABLE_S, RELIABLE_CONFIDENCE
from contract.tensor import VIDEO_BITS_PER_PIXEL_KEY, Measurement
from contract.vitals import VITALS
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
class PulseWave:
    """The fused pulse on the uniform grid: `t_s` [N] (measurement clock) at `fs_hz`, `signal` [N] (unit
    std, systole up, 0 where no data), `valid` [N]."""

    t_s: np.ndarray
    fs_hz: float
    signal: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class Spectrum:
    """The whole record's fused spectrum: `freq_bpm` [F], `power` [F] (peak 1, motion-attenuated) and
    the motion gain [F] applied to it (1 = no attenuation)."""

    freq_bpm: np.ndarray
    power: np.ndarray
    motion_gain: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class HeartRate:
    """The heart rate, how it was read, and the evidence behind its confidence.

    `hr_bpm` is what is reported (`method` "spectral", or "beats" when clean beats refine it),
    `spectral_hr_bpm` the periodogram peak where the track lives. `snr_db` is the mean SNR along the
    track, `whole_snr_db` the record's. The track: `track_t_s`, `track_bpm`, `track_snr_db` per window,
    `track_support` the share of windows whose own peak is on it. `factors` are the confidence's terms.
    """

    hr_bpm: float
    method: str
    spectral_hr_bpm: float
    snr_db: float
    whole_snr_db: float
    harmonic_corrected: bool
    track_t_s: np.ndarray
    track_bpm: np.ndarray
    track_snr_db: np.ndarray
    track_support: float
    confidence: float
    factors: dict[str, float]


@dataclass(frozen=True, slots=True, eq=False)
class BeatTimes:
    """Beats of the fused pulse: times `t_s` [B], intervals `ibi_ms` [B-1] and which are clean, SDNN and
    RMSSD (NaN when too few clean beats); `template_r` (beat-to-mean-beat correlation) and `jitter_ms`
    (the timing error it predicts) are the HRV evidence, `factors` the HRV confidence's terms."""

    t_s: np.ndarray
    ibi_ms: np.ndarray
    accepted: np.ndarray
    sdnn_ms: float
    rmssd_ms: float
    template_r: float
    jitter_ms: float
    confidence: float
    factors: dict[str, float]


@dataclass(frozen=True, slots=True, eq=False)
class Breathing:
    """Breathing: `signal` [N] (the best agreeing source, band-passed, on the pulse's `t_s`), `rr_bpm`,
    every source as (name, breaths/min, quality), the agreeing ones, and the confidence."""

    signal: np.ndarray
    rr_bpm: float
    sources: tuple[tuple[str, float, float], ...]
    agreeing: tuple[str, ...]
    confidence: float


@dataclass(frozen=True, slots=True, eq=False)
class RegionTable:
    """Per region (order of `names`): SNR at the track (dB, NaN if unused), own peak (bpm), projection
    ("pos" or "none"), weight in the heart rate, and coverage (share of the record present)."""

    names: tuple[str, ...]
    snr_db: np.ndarray
    hr_bpm: np.ndarray
    method: tuple[str, ...]
    weight: np.ndarray
    coverage: np.ndarray


@dataclass(frozen=True, slots=True)
class RecordingQuality:
    """What the recording itself allowed: coverage, durations (s), frame rate and jitter, head motion
    (in-band face-box std as a fraction of face width), the red/blue ratio of ratios (SpO2's input) and
    the replayed video's compressed bits per pixel (None for a camera)."""

    coverage: float
    duration_s: float
    usable_s: float
    fps_hz: float
    frame_jitter_ms: float
    motion_level: float
    ratio_of_ratios: float
    video_bits_per_pixel: float | None


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """Everything behind the vitals, in named parts, as arrays for plotting (times on the measurement's
    `t_s` clock): the report plots these and the server reports numbers derived from the same object."""

    pulse: PulseWave
    spectrum: Spectrum
    heart: HeartRate
    beats: BeatTimes
    breathing: Breathing
    regions: RegionTable
    recording: RecordingQuality

    @property
    def confidence(self) -> dict[str, float]:
        """0..1 for the measured vitals: heart_rate, respiratory_rate, hrv."""
        return {
            "heart_rate": self.heart.confidence,
            "respiratory_rate": self.breathing.confidence,
            "hrv": self.beats.confidence,
        }


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
    whole_snr_db: float  # SNR of the whole-record spectrum at hr_hz (HR and HRV evidence)


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
        whole_snr_db=hr_pulse.whole_snr_db(f_hz, whole, hr_hz),
    )


def _analyze(m: Measurement, min_usable_s: float) -> Analysis:
    """The pipeline as a sequence of stages, each one's output the next one's input."""
    cond = condition(m, min_usable_s)
    stage = heart_rate_stage(cond, tuple(m.meta.regions))
    hr_conf = heart_rate_evidence(cond, stage)
    beats = detect_beats(stage.pulse, stage.pulse_valid, cond.t_s, stage.hr_hz * 60.0)
    beat_times, hrv_conf = beat_stage(cond, stage, beats, hr_conf.value)
    breathing = breathing_stage(cond, stage.fusion.weights, beats, hr_conf.value)
    hr_bpm, hr_method = refine_with_beats(stage.hr_hz * 60.0, beats, hrv_conf, hr_conf.value)
    return Analysis(
        pulse=PulseWave(t_s=cond.t_s, fs_hz=cond.fs_hz, signal=stage.pulse, valid=stage.pulse_valid),
        spectrum=_shown_spectrum(stage),
        heart=HeartRate(
            hr_bpm=hr_bpm,
            method=hr_method,
            spectral_hr_bpm=stage.hr_hz * 60.0,
            snr_db=hr_conf.factors["snr_db"],
            whole_snr_db=hr_conf.factors["whole_snr_db"],
            harmonic_corrected=stage.harmonic_corrected,
            track_t_s=stage.spec.t_s,
            track_bpm=stage.track_hz * 60.0,
            track_snr_db=10.0 * np.log10(np.maximum(stage.track_snr, 1e-3)),
            track_support=hr_conf.factors["support"],
            confidence=hr_conf.value,
            factors=hr_conf.factors,
        ),
        beats=beat_times,
        breathing=breathing,
        regions=RegionTable(
            names=tuple(m.meta.regions),
            snr_db=stage.fusion.snr_db,
            hr_bpm=stage.fusion.hr_bpm,
            method=tuple("pos" if w > 0 else "none" for w in stage.fusion.weights),
            weight=stage.fusion.weights,
            coverage=cond.region_coverage,
        ),
        recording=RecordingQuality(
            coverage=cond.coverage,
            duration_s=cond.duration_s,
            usable_s=cond.usable_s,
            fps_hz=cond.fps_hz,
            frame_jitter_ms=cond.frame_interval_jitter_ms,
            motion_level=stage.motion_level,
            ratio_of_ratios=ratio_of_ratios(cond.rgb, cond.valid, stage.fusion.weights, cond.fs_hz),
            video_bits_per_pixel=_bits_per_pixel(m),
        ),
    )


def heart_rate_evidence(cond: Conditioned, stage: HeartRateStage) -> conf.HrConfidence:
    """The heart-rate confidence from the track's evidence (see `confidence.heart_rate_confidence`)."""
    fused, f_hz, track_hz = stage.fused, stage.spec.f_hz, stage.track_hz
    measured = np.isfinite(stage.fusion.hr_bpm)
    return conf.heart_rate_confidence(
        snr_db=hr_pulse.to_db(float(np.mean(stage.track_snr))),
        support=hr_pulse.track_support(fused, f_hz, track_hz),
        margin=hr_pulse.track_margin(fused, f_hz, track_hz, stage.track_score),
        sharpness_db=hr_pulse.track_sharpness_db(fused, f_hz, track_hz),
        roughness_bpm=hr_pulse.track_roughness_bpm(track_hz),
        split_half=stage.split_half,
        split_half_held=stage.split_half_held,
        whole_snr_db=stage.whole_snr_db,
        # Regions outside the fusion still read their own peak: how many of them agree is a diagnostic.
        agreement=conf.closeness(stage.fusion.hr_bpm, stage.hr_hz * 60.0, measured.astype(float))
        if measured.sum() > 1
        else 1.0,
        motion_level=stage.motion_level,
        coverage=cond.coverage,
    )


def beat_stage(
    cond: Conditioned, stage: HeartRateStage, beats: Beats, hr_confidence: float
) -> tuple[BeatTimes, conf.HrvConfidence]:
    """Beat times, SDNN/RMSSD and the HRV confidence (zero when too few clean beats for an SDNN)."""
    spectral_bpm = stage.hr_hz * 60.0
    clean_ibi_ms = beats.ibi_ms[beats.accepted]
    hrv_conf = conf.hrv_confidence(
        hr_confidence=hr_confidence,
        snr_db=stage.whole_snr_db,
        n_clean=beats.n_clean,
        n_expected=cond.usable_s * spectral_bpm / 60.0 - 1.0,
        beat_hr_bpm=60000.0 / float(np.mean(clean_ibi_ms)) if clean_ibi_ms.size else float("nan"),
        spectral_hr_bpm=spectral_bpm,
        template_r=beats.template_r,
        min_clean=MIN_CLEAN_BEATS,
    )
    times = BeatTimes(
        t_s=beats.t_s,
        ibi_ms=beats.ibi_ms,
        accepted=beats.accepted,
        sdnn_ms=beats.sdnn_ms,
        rmssd_ms=beats.rmssd_ms,
        template_r=beats.template_r,
        jitter_ms=hrv_conf.jitter_ms,
        confidence=hrv_conf.value if math.isfinite(beats.sdnn_ms) else 0.0,
        factors={
            "snr": hrv_conf.snr,
            "timing": hrv_conf.timing,
            "share": hrv_conf.share,
            "agreement": hrv_conf.agreement,
            "heart_rate": hrv_conf.heart_rate,
        },
    )
    return times, hrv_conf


def breathing_stage(cond: Conditioned, weights: np.ndarray, beats: Beats, hr_confidence: float) -> Breathing:
    """The respiratory rate from the fused sources, its waveform on the pulse grid and its confidence."""
    resp = _respiration(cond, weights, beats, hr_confidence)
    signal = np.zeros_like(cond.t_s)
    if resp.best is not None:
        signal = np.interp(cond.t_s, resp.best.t_s, resp.best.signal)
    return Breathing(
        signal=signal,
        rr_bpm=float(np.clip(resp.rr_bpm, 6.0, 30.0)),
        sources=tuple((s.name, s.rr_bpm, s.quality) for s in resp.sources),
        agreeing=resp.agreeing,
        confidence=resp.confidence * conf.coverage_factor(cond.coverage),
    )


def _shown_spectrum(stage: HeartRateStage) -> Spectrum:
    """The whole-record spectrum over the displayed range, scaled to peak 1."""
    f_hz, power = stage.f_hz, stage.power
    shown = (f_hz * 60.0 >= SPECTRUM_LOW_BPM) & (f_hz * 60.0 <= SPECTRUM_HIGH_BPM)
    return Spectrum(
        freq_bpm=f_hz[shown] * 60.0,
        power=power[shown] / max(float(power[shown].max()), 1e-300),
        motion_gain=stage.gain[shown],
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
    bpp = a.recording.video_bits_per_pixel
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
class Estimate:
    """One vital: its value in the unit of `contract.vitals`, its confidence 0..1, whether the camera
    measured it or it is a population prior, and `basis`, a short account of where the value came from."""

    value: float
    unit: str
    confidence: float
    source: Literal["measured", "prior"]
    basis: str

    @property
    def reliable(self) -> bool:
        """A measurement confident enough to be shown as a reading (priors never are)."""
        return self.source == "measured" and self.confidence >= RELIABLE_CONFIDENCE


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One `Estimate` per vital of `contract.vitals.VITALS` (in table order), the overall confidence, and
    `quality`, the JSON-ready detail behind them."""

    estimates: Mapping[str, Estimate]
    confidence: float
    quality: dict[str, Any]

    @property
    def vitals(self) -> dict[str, float]:
        """The spec's `vitals` object: every vital's value, then the overall confidence."""
        return {**{key: e.value for key, e in self.estimates.items()}, "confidence": self.confidence}

    @classmethod
    def from_vitals(cls, vitals: Mapping[str, float], quality: dict[str, Any]) -> InferenceResult:
        """A result from a spec `vitals` object (an engine other than ours, or a test's stand-in): each
        vital's confidence and source come from `quality` when it has them, else the overall confidence
        and the table's kind."""
        confidences, sources = quality.get("confidence") or {}, quality.get("source") or {}
        overall = float(vitals.get("confidence", 0.0))
        estimates = {
            v.key: Estimate(
                value=float(vitals[v.key]),
                unit=v.unit,
                confidence=float(confidences.get(v.key, overall)),
                source="prior" if sources.get(v.key, v.kind) == "prior" else "measured",
                basis="",
            )
            for v in VITALS
            if v.key in vitals
        }
        return cls(estimates=estimates, confidence=overall, quality=quality)


def estimates_of(
    a: Analysis, demographics: Mapping[str, Any] | None, calibration: tuple[float, float] | None
) -> dict[str, Estimate]:
    """Each vital's estimate, rounded as the API shows it (`contract.vitals` decimals; HR and RR to 0.1)."""
    bp = blood_pressure_prior(demographics)
    spo2 = spo2_estimate(a.recording.ratio_of_ratios, calibration, a.heart.confidence)
    hrv_measured = math.isfinite(a.beats.sdnn_ms)
    hrv_ms = float(np.clip(a.beats.sdnn_ms, 0.0, 300.0)) if hrv_measured else HRV_PRIOR_MS
    units = {v.key: v.unit for v in VITALS}

    def estimate(
        key: str, value: float, digits: int, confidence: float, measured: bool, basis: str
    ) -> Estimate:
        return Estimate(
            value=round(float(value), digits),
            unit=units[key],
            confidence=round(float(np.clip(confidence, 0.0, 1.0)), 3),
            source="measured" if measured else "prior",
            basis=basis,
        )

    hr_basis = (
        "mean of clean beat intervals" if a.heart.method == "beats" else "POS spectral peak on the track"
    )
    out = {
        "heart_rate": estimate("heart_rate", a.heart.hr_bpm, 1, a.heart.confidence, True, hr_basis),
        "respiratory_rate": estimate(
            "respiratory_rate", a.breathing.rr_bpm, 1, a.breathing.confidence, True,
            "agreeing respiratory modulations: " + (", ".join(a.breathing.agreeing) or "none"),
        ),
        "hrv": estimate(
            "hrv", hrv_ms, 1, a.beats.confidence, hrv_measured,
            "SDNN of clean beat intervals" if hrv_measured else "population prior (too few clean beats)",
        ),
        "spo2": estimate("spo2", spo2.spo2_pct, 1, spo2.confidence, calibration is not None, spo2.basis),
        "systolic_bp": estimate("systolic_bp", round(bp.systolic_mmhg), 0, bp.confidence, False, bp.basis),
        "diastolic_bp": estimate("diastolic_bp", round(bp.diastolic_mmhg), 0, bp.confidence, False, bp.basis),
    }  # fmt: skip
    return {v.key: out[v.key] for v in VITALS}


def _result(
    a: Analysis, demographics: Mapping[str, Any] | None, calibration: tuple[float, float] | None
) -> InferenceResult:
    estimates = estimates_of(a, demographics, calibration)
    # The spec reserves confidence 0.0 for fallback vitals (clients test for it), so a measurement,
    # however weak, reports at least the smallest value the API's three decimals can show.
    overall = max(estimates["heart_rate"].confidence, MIN_MEASURED_CONFIDENCE)
    heart, beats, rec = a.heart, a.beats, a.recording
    quality: dict[str, Any] = {
        "reason": None,
        "warnings": quality_warnings(a),
        "engine_version": ENGINE_VERSION,
        "confidence": {k: e.confidence for k, e in estimates.items()},
        "source": {k: e.source for k, e in estimates.items()},
        "reliable": {k: e.reliable for k, e in estimates.items()},
        "snr_db": _num(heart.snr_db, 2),
        "hr_method": heart.method,
        "spectral_hr_bpm": _num(heart.spectral_hr_bpm, 1),
        "hr_confidence_factors": {k: _num(v, 3) for k, v in heart.factors.items()},
        "harmonic_corrected": bool(heart.harmonic_corrected),
        "coverage": _num(rec.coverage, 3),
        "usable_s": _num(rec.usable_s, 2),
        "duration_s": _num(rec.duration_s, 2),
        "fps": _num(rec.fps_hz, 2),
        "frame_jitter_ms": _num(rec.frame_jitter_ms, 2),
        "motion_level": _num(rec.motion_level, 4),
        "regions": {
            name: {
                "snr_db": _num(a.regions.snr_db[i], 2),
                "hr_bpm": _num(a.regions.hr_bpm[i], 1),
                "method": a.regions.method[i],
                "weight": _num(a.regions.weight[i], 3),
                "coverage": _num(a.regions.coverage[i], 3),
            }
            for i, name in enumerate(a.regions.names)
        },
        "hr_track_t_s": [_num(t - a.pulse.t_s[0], 1) for t in heart.track_t_s],
        "hr_track_bpm": [_num(v, 1) for v in heart.track_bpm],
        "sdnn_ms": _num(beats.sdnn_ms, 1),
        "rmssd_ms": _num(beats.rmssd_ms, 1),
        "beats": int(beats.t_s.shape[0]),
        "clean_intervals": int(beats.accepted.sum()),
        "hrv_confidence_factors": {k: _num(v, 3) for k, v in beats.factors.items()},
        "beat_template_r": _num(beats.template_r, 3),
        "beat_jitter_ms": _num(beats.jitter_ms, 1),
        "respiratory_sources": [
            {"name": n, "rr_bpm": _num(rr, 1), "quality": _num(q, 3)} for n, rr, q in a.breathing.sources
        ],
        "respiratory_agreeing": list(a.breathing.agreeing),
        "ratio_of_ratios": _num(rec.ratio_of_ratios, 4),
        "spo2_basis": estimates["spo2"].basis,
        "bp_basis": estimates["systolic_bp"].basis,
    }
    return InferenceResult(estimates=estimates, confidence=overall, quality=quality)


def _num(value: float, digits: int) -> float | None:
    """A plain rounded float for JSON, or None for NaN/inf."""
    v = float(value)
    return round(v, digits) if math.isfinite(v) else None
