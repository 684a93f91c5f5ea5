"""Heart rate: skin-colour projections (POS, CHROM), SNR-weighted spectral fusion, harmonic check, HR track.

POS: Wang, den Brinker, Stuijk, de Haan, "Algorithmic principles of remote PPG", IEEE TBME 64(7), 2017.
CHROM and the SNR metric: de Haan & Jeanne, "Robust pulse rate from chrominance-based rPPG",
IEEE TBME 60(10), 2013. Both cancel the intensity (specular and illumination) component that dominates
raw skin colour, leaving the blood-volume pulse; POS needs no skin-tone prior, CHROM is the older
baseline and sometimes wins on a region, so both are scored and each region keeps the better one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d

from server.inference.signals import (
    band_peak,
    bandpass,
    hann_power,
    nfft_for,
    parabolic_peak,
    robust_clip,
    template_snr_db,
    unit_std,
    welch_psd,
)

HR_LOW_HZ: Final = 0.7  # 42 bpm
HR_HIGH_HZ: Final = 3.5  # 210 bpm
SNR_LOW_HZ: Final = 0.6
SNR_HIGH_HZ: Final = 4.0
PROJECTION_WINDOW_S: Final = 1.6
TRACK_WINDOW_S: Final = 10.0
TRACK_HOP_S: Final = 2.0
# A sub-harmonic this strong (relative to the chosen peak) means the chosen peak is the pulse's harmonic.
SUBHARMONIC_RATIO: Final = 0.4
SUBHARMONIC_PROMINENCE: Final = 4.0
PERIODICITY_GAIN: Final = 0.03
# In-band face-box motion (std as a fraction of face width) at which spectral attenuation starts to bite.
MOTION_REF: Final = 0.004


def pos(rgb: np.ndarray, fs_hz: float, window_s: float = PROJECTION_WINDOW_S) -> np.ndarray:
    """Plane-Orthogonal-to-Skin pulse from one region's RGB trace [N, 3]; returns the pulse [N].

    Per 1.6 s sliding window (one sample hop): temporal normalisation by the window mean, projection onto
    the plane orthogonal to skin tone (P = [[0, 1, -1], [-2, 1, 1]]), alpha tuning h = S1 + σ(S1)/σ(S2)·S2,
    and overlap-add of the zero-mean window results (Wang et al. 2017, Algorithm 1).
    """
    n = rgb.shape[0]
    length = max(2, round(window_s * fs_hz))
    if n < length:
        return np.zeros(n)
    windows = sliding_window_view(rgb, length, axis=0)  # [W, 3, L]
    mean = windows.mean(axis=2, keepdims=True)
    cn = windows / np.where(mean > 0, mean, 1.0)
    s1 = cn[:, 1, :] - cn[:, 2, :]
    s2 = -2.0 * cn[:, 0, :] + cn[:, 1, :] + cn[:, 2, :]
    sd1, sd2 = s1.std(axis=1), s2.std(axis=1)
    alpha = np.where(sd2 > 0, sd1 / np.where(sd2 > 0, sd2, 1.0), 0.0)
    h = s1 + alpha[:, None] * s2
    h -= h.mean(axis=1, keepdims=True)
    out = np.zeros(n)
    n_windows = h.shape[0]
    for k in range(length):
        out[k : k + n_windows] += h[:, k]
    return out


def chrom(rgb: np.ndarray, fs_hz: float, window_s: float = PROJECTION_WINDOW_S) -> np.ndarray:
    """CHROM pulse (de Haan & Jeanne 2013) from one region's RGB trace [N, 3]; returns the pulse [N].

    Colour normalised by its local (window-length) mean, chrominance X = 3R - 2G, Y = 1.5R + G - 1.5B,
    both band-passed, then S = Xf - α·Yf with α = σ(Xf)/σ(Yf) per Hann window, overlap-added at half hop.
    """
    n = rgb.shape[0]
    length = max(4, round(window_s * fs_hz))
    if n < length:
        return np.zeros(n)
    local_mean = uniform_filter1d(rgb, size=length, axis=0, mode="nearest")
    cn = rgb / np.where(local_mean > 0, local_mean, 1.0)
    x = 3.0 * cn[:, 0] - 2.0 * cn[:, 1]
    y = 1.5 * cn[:, 0] + cn[:, 1] - 1.5 * cn[:, 2]
    xf, yf = bandpass(np.stack([x, y]), HR_LOW_HZ, HR_HIGH_HZ, fs_hz)
    hop = length // 2
    length = 2 * hop
    window = np.hanning(length)
    out = np.zeros(n)
    xw = sliding_window_view(xf, length)[::hop]
    yw = sliding_window_view(yf, length)[::hop]
    sx, sy = xw.std(axis=1), yw.std(axis=1)
    alpha = np.where(sy > 0, sx / np.where(sy > 0, sy, 1.0), 0.0)
    segments = (xw - alpha[:, None] * yw) * window
    for i, seg in enumerate(segments):
        out[i * hop : i * hop + length] += seg
    return out


def condition_pulse(raw: np.ndarray, valid: np.ndarray, fs_hz: float) -> np.ndarray:
    """Detrend, band-pass 0.7–3.5 Hz, clip motion spikes, silence invalid stretches, scale to unit std."""
    x = raw - np.polyval(np.polyfit(np.arange(raw.shape[-1]), raw, 1), np.arange(raw.shape[-1]))
    x = bandpass(x, HR_LOW_HZ, HR_HIGH_HZ, fs_hz)
    x = robust_clip(x)
    x = np.where(valid, x, 0.0)
    return unit_std(x)


@dataclass(frozen=True, slots=True)
class RegionPulse:
    """The better projection of one region: pulse [N] (unit std), its spectrum and its SNR."""

    method: str
    pulse: np.ndarray
    power: np.ndarray
    hr_bpm: float
    snr_db: float


def welch_segment_s(duration_s: float) -> float:
    """Welch segment: half the record, 10–20 s, so 30 s gives three overlapping 15 s segments."""
    return float(np.clip(duration_s / 2.0, 10.0, 20.0))


def region_pulses(
    rgb: np.ndarray, valid: np.ndarray, fs_hz: float, segment_s: float
) -> tuple[np.ndarray, list[RegionPulse | None]]:
    """POS and CHROM for each region [R, N, 3]; keep the projection with the higher SNR per region.

    Regions with no valid sample return None. Returns (f_hz, regions).
    """
    candidates: list[tuple[int, str, np.ndarray]] = []
    for r in range(rgb.shape[0]):
        if not valid[r].any():
            continue
        for name, method in (("pos", pos), ("chrom", chrom)):
            candidates.append((r, name, condition_pulse(method(rgb[r], fs_hz), valid[r], fs_hz)))
    out: list[RegionPulse | None] = [None] * rgb.shape[0]
    if not candidates:
        return np.zeros(1), out
    stacked = np.stack([c[2] for c in candidates])
    f_hz, power = welch_psd(stacked, fs_hz, segment_s)
    for (r, name, pulse), pw in zip(candidates, power, strict=True):
        _, f0 = band_peak(f_hz, pw, HR_LOW_HZ, HR_HIGH_HZ)
        snr = template_snr_db(f_hz, pw, f0, SNR_LOW_HZ, SNR_HIGH_HZ)
        current = out[r]
        if current is None or snr > current.snr_db:
            out[r] = RegionPulse(method=name, pulse=pulse, power=pw, hr_bpm=f0 * 60.0, snr_db=snr)
    return f_hz, out


def normalised(power: np.ndarray, f_hz: np.ndarray) -> np.ndarray:
    """Spectrum scaled to unit total power in the SNR band, so regions of any brightness compare."""
    band = (f_hz >= SNR_LOW_HZ) & (f_hz <= SNR_HIGH_HZ)
    total = float(power[..., band].sum()) if power.ndim == 1 else power[..., band].sum(axis=-1, keepdims=True)
    return power / np.where(np.asarray(total) > 0, total, 1.0)


def region_weights(regions: list[RegionPulse | None], coverage: np.ndarray) -> np.ndarray:
    """Fusion weight per region: linear SNR × coverage (regions under half the best coverage drop out)."""
    weights = np.zeros(len(regions))
    best = float(coverage.max()) if coverage.size else 0.0
    for r, reg in enumerate(regions):
        if reg is None or coverage[r] < 0.5 * best:
            continue
        weights[r] = 10.0 ** (reg.snr_db / 10.0) * coverage[r]
    return weights


def motion_attenuation(
    face_box: np.ndarray, box_valid: np.ndarray, fs_hz: float, f_hz: np.ndarray, segment_s: float
) -> tuple[np.ndarray, float]:
    """Spectral gain [F] in 0..1 that attenuates frequencies where the face box moves, and the motion level.

    The face centre and size are band-passed to the pulse band; their in-band std as a fraction of face
    width is the motion level. Gain = 1 / (1 + g·M(f)/max M) with g = (level / MOTION_REF)²: sub-pixel
    landmark jitter barely changes the spectrum, a head bob at a fixed rate suppresses that rate.
    """
    if box_valid.mean() < 0.5:
        return np.ones_like(f_hz), 0.0
    width = float(np.median(face_box[box_valid, 2]))
    if not width > 0:
        return np.ones_like(f_hz), 0.0
    cx = face_box[:, 0] + face_box[:, 2] / 2.0
    cy = face_box[:, 1] + face_box[:, 3] / 2.0
    size = face_box[:, 2]
    motion = np.stack([cx, cy, size]) / width
    motion = np.where(box_valid, motion, np.mean(motion[:, box_valid], axis=1, keepdims=True))
    motion = bandpass(motion - motion.mean(axis=1, keepdims=True), HR_LOW_HZ, HR_HIGH_HZ, fs_hz)
    motion = np.where(box_valid, motion, 0.0)
    level = float(np.sqrt(np.sum(np.var(motion, axis=1))))
    _, m_power = welch_psd(motion, fs_hz, segment_s)
    m_total = m_power.sum(axis=0)
    peak = float(m_total.max())
    if peak <= 0:
        return np.ones_like(f_hz), level
    gain_strength = min((level / MOTION_REF) ** 2, 50.0)
    return 1.0 / (1.0 + gain_strength * m_total / peak), level


@dataclass(frozen=True, slots=True)
class HeartRate:
    """Fused heart-rate estimate: spectrum in bpm, the refined peak, its SNR and the harmonic decision."""

    f_hz: np.ndarray
    power: np.ndarray
    hr_bpm: float
    snr_db: float
    harmonic_corrected: bool


def periodicity_gain(pulse: np.ndarray, fs_hz: float, f0_hz: float) -> float:
    """Autocorrelation at two periods of `f0_hz` minus that at one period.

    If the peak at f0 is really the harmonic of a pulse at f0/2, successive half-periods hold different
    waves (systolic vs diastolic) and the signal repeats only every 2/f0: the gain is positive. For a
    genuine f0 it is ≤ 0 (correlation decays with lag as the rhythm varies).
    """
    n = pulse.shape[0]
    spec = np.fft.rfft(pulse - pulse.mean(), 2 * n)
    acf = np.fft.irfft(np.abs(spec) ** 2)[:n]
    if acf[0] <= 0:
        return 0.0
    acf = acf / acf[0]

    def around(lag: float) -> float:
        i, w = round(lag), int(0.08 * lag) + 1
        return float(acf[max(i - w, 0) : min(i + w + 1, n)].max()) if i < n else 0.0

    period = fs_hz / f0_hz
    return around(2.0 * period) - around(period)


def fused_heart_rate(f_hz: np.ndarray, fused_power: np.ndarray, pulse: np.ndarray, fs_hz: float) -> HeartRate:
    """Peak of the fused spectrum, refined, with the harmonic-trap check.

    Trap: a pulse wave with a strong diastolic wave can put more power at 2·HR than at HR. The chosen
    peak is replaced by its sub-harmonic (if that is still ≥ 42 bpm and a local maximum) when either the
    sub-harmonic holds ≥ 40 % of the peak's power, or it stands ≥ 4× above the band's median power and
    the waveform repeats better at two periods than at one (`periodicity_gain` ≥ 0.03).
    """
    k, f0 = band_peak(f_hz, fused_power, HR_LOW_HZ, HR_HIGH_HZ)
    corrected = False
    half = f0 / 2.0
    if half >= HR_LOW_HZ:
        near = np.flatnonzero(np.abs(f_hz - half) <= 0.08)
        if near.size:
            j = int(near[np.argmax(fused_power[near])])
            is_local_max = 0 < j < f_hz.shape[0] - 1 and fused_power[j] >= max(
                fused_power[j - 1], fused_power[j + 1]
            )
            band = (f_hz >= HR_LOW_HZ) & (f_hz <= HR_HIGH_HZ)
            floor = float(np.median(fused_power[band]))
            strong = fused_power[j] >= SUBHARMONIC_RATIO * fused_power[k]
            prominent = fused_power[j] >= SUBHARMONIC_PROMINENCE * floor and (
                periodicity_gain(pulse, fs_hz, f0) >= PERIODICITY_GAIN
            )
            if is_local_max and (strong or prominent):
                f0 = parabolic_peak(f_hz, fused_power, j)
                corrected = True
    snr = template_snr_db(f_hz, fused_power, f0, SNR_LOW_HZ, SNR_HIGH_HZ)
    return HeartRate(f_hz=f_hz, power=fused_power, hr_bpm=f0 * 60.0, snr_db=snr, harmonic_corrected=corrected)


@dataclass(frozen=True, slots=True)
class HrTrack:
    """HR per 10 s window (2 s hop): centre times (s), bpm, per-window SNR (dB) and valid share."""

    t_s: np.ndarray
    hr_bpm: np.ndarray
    snr_db: np.ndarray
    valid_share: np.ndarray


def hr_track(
    pulses: np.ndarray,
    weights: np.ndarray,
    valid: np.ndarray,
    t_s: np.ndarray,
    fs_hz: float,
    gain_f_hz: np.ndarray,
    gain: np.ndarray,
    hr_bpm: float,
) -> HrTrack:
    """Windowed HR of the SNR-weighted fused spectrum (same fusion as the whole-record estimate).

    The harmonic decision of the whole record carries over: a window whose peak sits at about twice the
    record's HR takes its sub-harmonic instead.
    """
    n = pulses.shape[1]
    length = min(n, round(TRACK_WINDOW_S * fs_hz))
    hop = max(1, round(TRACK_HOP_S * fs_hz))
    starts = np.arange(0, n - length + 1, hop)
    segs = np.stack([pulses[:, s : s + length] for s in starts], axis=1)  # [R, W, L]
    nfft = nfft_for(fs_hz, length, resolution_hz=1.0 / 120.0)
    f_hz, power = hann_power(segs, fs_hz, nfft)  # [R, W, F]
    power = normalised(power, f_hz)
    fused = np.tensordot(weights / max(weights.sum(), 1e-12), power, axes=(0, 0))  # [W, F]
    fused *= np.interp(f_hz, gain_f_hz, gain)
    track = np.empty(starts.shape[0])
    snr = np.empty(starts.shape[0])
    for i in range(starts.shape[0]):
        _, f0 = band_peak(f_hz, fused[i], HR_LOW_HZ, HR_HIGH_HZ)
        if abs(f0 * 60.0 - 2.0 * hr_bpm) < 8.0:
            near = np.abs(f_hz - f0 / 2.0) <= 0.1
            j = int(np.flatnonzero(near)[np.argmax(fused[i][near])])
            f0 = parabolic_peak(f_hz, fused[i], j)
        track[i] = f0 * 60.0
        snr[i] = template_snr_db(f_hz, fused[i], f0, SNR_LOW_HZ, SNR_HIGH_HZ)
    any_valid = valid.any(axis=0)
    share = np.array([any_valid[s : s + length].mean() for s in starts])
    centres = t_s[starts] + (length - 1) / (2.0 * fs_hz)
    return HrTrack(t_s=centres, hr_bpm=track, snr_db=snr, valid_share=share)
