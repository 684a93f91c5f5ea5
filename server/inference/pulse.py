"""Heart rate: the POS pulse per region, a spectrogram, a continuity tracker, region weights, the final peak.

POS: Wang, den Brinker, Stuijk, de Haan, "Algorithmic principles of remote PPG", IEEE TBME 64(7), 2017.
SNR metric: de Haan & Jeanne, "Robust pulse rate from chrominance-based rPPG", IEEE TBME 60(10), 2013.

Why a tracker. On real, compressed video (UBFC-rPPG at 100-200 kbit/s) the pulse of a whole face stands
only about -3..+2 dB above the noise in a 10 s window, and some windows are owned by a noise peak, often a
slow one at 45-65 bpm (head motion, expression, the codec). A single periodogram peak, or a fused
spectrum with a "harmonic trap" check, then reads 50-60 bpm for a person at 110. The pulse, unlike the
noise peaks, is *continuous*: from one second to the next the heart rate moves by a few bpm. So the
heart rate is the most probable continuous path through the per-window spectra (Viterbi, Gaussian step
of TRACK_STEP_BPM_PER_S), and the whole-record value is the periodogram peak where that path lives.

Why the whole face. The pulse is the same everywhere on the face while the compression noise is not, so
the largest skin area averages the most of it away: on the UBFC-rPPG videos the whole face (minus eyes,
brows and lips) stands at -1..+2 dB in a 10 s window where a cheek is at -9..-3 dB and a 12th of the face
at -11..-4 dB. Weighting the regions by their own SNR (maximal-ratio combining) should beat that in
theory, but the weights have to be estimated from the same short, noisy record, and on the real videos it
lost to the plain face region at every window length (10 s windows: 16.4 against 9.6 bpm MAE). So the
heart rate comes from the face region; the other regions are diagnostics, and the two face halves test
the result (`split_half_coherence`). Without a face region (full-frame mode, other region sets) the
usable regions are averaged with equal weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from contract.pos import PULSE_HIGH_HZ, PULSE_LOW_HZ, pos
from server.inference.signals import (
    bandpass,
    hann_power,
    nfft_for,
    parabolic_peak,
    robust_clip,
    template_snr_db,
    unit_std,
    welch_psd,
)

HR_LOW_HZ: Final = PULSE_LOW_HZ  # 42 bpm
HR_HIGH_HZ: Final = PULSE_HIGH_HZ  # 210 bpm
SNR_LOW_HZ: Final = 0.6
SNR_HIGH_HZ: Final = 4.0
TRACK_WINDOW_S: Final = 10.0
MIN_TRACK_WINDOW_S: Final = 6.0
TRACK_HOP_S: Final = 1.0
# Standard deviation of the heart-rate change per second the tracker expects (a change of 3 bpm in a
# second costs as much as a peak e times weaker; exercise recovery is ~1 bpm/s, a startle up to ~5).
TRACK_STEP_BPM_PER_S: Final = 3.0
TRACK_RESOLUTION_HZ: Final = 1.0 / 120.0  # 0.5 bpm bins
# The whole-record peak is searched where the track spent its time (a Gaussian of this width per window).
OCCUPANCY_WIDTH_BPM: Final = 1.5
# Sub-harmonic (trap) test: the half-rate must be a clear spectral line of its own, this many times the
# band's median power, and the waveform must repeat better at two periods than at one.
SUBHARMONIC_PROMINENCE: Final = 8.0
PERIODICITY_GAIN: Final = 0.05
# ... and the line the track found (the supposed harmonic) must itself stand this many times above the
# band's median: a pulse shows its waveform's shape only when it is clean. On the UBFC-rPPG videos the
# track's line stands 3-70x above the median in 10-30 s spans, and the two false traps the rule above let
# through (110 and 105 bpm halved in 15 and 20 s spans) were at 17x and 13x; a simulated dicrotic pulse
# whose harmonic outweighs its fundamental stands at 150-480x.
HARMONIC_LINE_PROMINENCE: Final = 50.0
# A window "supports" the track when its own highest peak lies this close to it.
SUPPORT_TOLERANCE_BPM: Final = 6.0
# In-band face-box motion (std as a fraction of face width) at which spectral attenuation starts to bite.
MOTION_REF: Final = 0.004


def condition_pulse(raw: np.ndarray, valid: np.ndarray, fs_hz: float) -> np.ndarray:
    """Detrend, band-pass 0.7–3.5 Hz, clip motion spikes, silence invalid stretches, scale to unit std."""
    x = raw - np.polyval(np.polyfit(np.arange(raw.shape[-1]), raw, 1), np.arange(raw.shape[-1]))
    x = bandpass(x, HR_LOW_HZ, HR_HIGH_HZ, fs_hz)
    x = robust_clip(x)
    x = np.where(valid, x, 0.0)
    return unit_std(x)


def region_pulses(rgb: np.ndarray, valid: np.ndarray, fs_hz: float) -> np.ndarray:
    """Conditioned POS pulse [R, N] (unit std) of every region [R, N, 3]; all zeros where a region is absent."""
    pulses = np.zeros(valid.shape)
    for r in range(rgb.shape[0]):
        if valid[r].any():
            pulses[r] = condition_pulse(pos(rgb[r], fs_hz), valid[r], fs_hz)
    return pulses


def track_window_s(duration_s: float) -> float:
    """10 s windows (0.1 Hz resolution, the rate changes little within one); shorter records get at least
    three windows' worth of hops, never under 6 s."""
    return float(np.clip(duration_s / 2.0, MIN_TRACK_WINDOW_S, TRACK_WINDOW_S))


def normalised(power: np.ndarray, f_hz: np.ndarray) -> np.ndarray:
    """Spectra scaled to unit total power in the SNR band (last axis), so regions of any brightness compare."""
    band = (f_hz >= SNR_LOW_HZ) & (f_hz <= SNR_HIGH_HZ)
    total = power[..., band].sum(axis=-1, keepdims=True)
    return power / np.where(total > 0, total, 1.0)


@dataclass(frozen=True, slots=True)
class Spectrogram:
    """Per-window pulse spectra: window centres `t_s` [W], `f_hz` [F], `power` [..., W, F] (unit band power)."""

    t_s: np.ndarray
    f_hz: np.ndarray
    power: np.ndarray
    window_s: float


def spectrogram(pulses: np.ndarray, t_s: np.ndarray, fs_hz: float, window_s: float) -> Spectrogram:
    """Hann spectra of `pulses` [..., N] in windows of `window_s`, one every TRACK_HOP_S, normalised."""
    n = pulses.shape[-1]
    length = min(n, round(window_s * fs_hz))
    hop = max(1, round(TRACK_HOP_S * fs_hz))
    starts = np.arange(0, n - length + 1, hop)
    segments = np.stack([pulses[..., s : s + length] for s in starts], axis=-2)  # [..., W, L]
    f_hz, power = hann_power(segments, fs_hz, nfft_for(fs_hz, length, TRACK_RESOLUTION_HZ))
    centres = t_s[starts] + (length - 1) / (2.0 * fs_hz)
    return Spectrogram(t_s=centres, f_hz=f_hz, power=normalised(power, f_hz), window_s=length / fs_hz)


def track(
    power: np.ndarray, f_hz: np.ndarray, low_hz: float = HR_LOW_HZ, high_hz: float = HR_HIGH_HZ
) -> np.ndarray:
    """The most probable continuous heart-rate path [W] (Hz) through per-window spectra `power` [W, F]."""
    return viterbi(power, f_hz, low_hz, high_hz)[0]


def viterbi(
    power: np.ndarray,
    f_hz: np.ndarray,
    low_hz: float = HR_LOW_HZ,
    high_hz: float = HR_HIGH_HZ,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """The most probable continuous heart-rate path [W] (Hz) through per-window spectra `power` [W, F].

    Viterbi: each window scores the log of its normalised power at a frequency, each step between
    windows a Gaussian log-penalty on the change (TRACK_STEP_BPM_PER_S per TRACK_HOP_S). A noise peak that
    owns a few windows cannot pull the path away, because jumping to it and back costs more than it
    gains; a heart rate that really drifts is followed.
    """
    band = np.flatnonzero((f_hz >= low_hz) & (f_hz <= high_hz))
    f_band = f_hz[band]
    p = power[:, band]
    log_p = np.log(p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300) + 1e-9)
    if excluded is not None:
        log_p = np.where(excluded[:, band], -1e6, log_p)
    # Steps beyond 6 sigma cost more than any spectrum can repay (18 nats against at most ~21 between the
    # floor and a peak), so each state only looks that far back: the same path at a fraction of the work.
    sigma_bins = TRACK_STEP_BPM_PER_S * TRACK_HOP_S / ((f_band[1] - f_band[0]) * 60.0)
    reach = min(int(np.ceil(6.0 * sigma_bins)), f_band.shape[0] - 1)
    offsets = np.arange(-reach, reach + 1)  # state j comes from j + offset
    step_cost = -0.5 * (offsets / sigma_bins) ** 2
    n_states = f_band.shape[0]
    rows = np.arange(n_states)[:, None]
    score = log_p[0].copy()
    back = np.zeros(log_p.shape, dtype=np.intp)
    for w in range(1, log_p.shape[0]):
        padded = np.concatenate([np.full(reach, -np.inf), score, np.full(reach, -np.inf)])
        candidates = sliding_window_view(padded, 2 * reach + 1) + step_cost  # [to, offset]
        best = np.argmax(candidates, axis=1)
        back[w] = rows[:, 0] + offsets[best]
        score = candidates[rows[:, 0], best] + log_p[w]
    path = np.empty(log_p.shape[0], dtype=np.intp)
    path[-1] = int(np.argmax(score))
    for w in range(log_p.shape[0] - 1, 0, -1):
        path[w - 1] = back[w, path[w]]
    return f_band[path], float(score[path[-1]])


def track_margin(
    power: np.ndarray, f_hz: np.ndarray, track_hz: np.ndarray, best_score: float, exclusion_bpm: float = 8.0
) -> float:
    """Log-likelihood per window by which the track beats the best path that keeps away from it.

    The alternative may not come within `exclusion_bpm` of the track, nor of its half or double (those
    are the same pulse). Noise offers many paths of similar score, so its best beats the runner-up by
    little; a pulse stands out by more in every window it is visible in.
    """
    width = exclusion_bpm / 60.0
    excluded = np.zeros(power.shape, dtype=bool)
    for multiple in (0.5, 1.0, 2.0):
        excluded |= np.abs(f_hz[None, :] - multiple * track_hz[:, None]) <= width
    _, alternative = viterbi(power, f_hz, excluded=excluded)
    return (best_score - alternative) / power.shape[0]


def snr_at_track(
    power: np.ndarray, f_hz: np.ndarray, track_hz: np.ndarray, half_width_hz: float = 0.1
) -> np.ndarray:
    """Linear SNR [..., W] of each window at the track: power within ±0.1 Hz of it and ±0.2 Hz of its
    harmonic over the rest of the SNR band (de Haan & Jeanne's template, per window)."""
    band = (f_hz >= SNR_LOW_HZ) & (f_hz <= SNR_HIGH_HZ)
    near = (np.abs(f_hz[None, :] - track_hz[:, None]) <= half_width_hz) | (
        np.abs(f_hz[None, :] - 2.0 * track_hz[:, None]) <= 2.0 * half_width_hz
    )
    signal = (power * (near & band)).sum(axis=-1)
    noise = (power * (~near & band)).sum(axis=-1)
    return signal / np.maximum(noise, 1e-12)


def to_db(ratio: float) -> float:
    return float(np.clip(10.0 * np.log10(max(ratio, 1e-3)), -30.0, 30.0))


@dataclass(frozen=True, slots=True)
class RegionFusion:
    """Per-region weights in the heart rate (sum 1), SNR at the track (dB, NaN if unused) and own peak (bpm)."""

    snr_db: np.ndarray
    weights: np.ndarray
    hr_bpm: np.ndarray


PRIMARY_REGION: Final = "face"


def usable_regions(pulses: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Regions with a signal and at least half the best region's coverage (a region that came and went
    mostly adds its gaps)."""
    best = float(coverage.max()) if coverage.size else 0.0
    return np.any(pulses != 0, axis=1) & (coverage >= 0.5 * best) & (coverage > 0)


def primary_weights(region_names: tuple[str, ...], usable: np.ndarray) -> np.ndarray:
    """One-hot on the face region when it is usable, else equal weights over the usable regions."""
    weights = np.zeros(usable.shape)
    if PRIMARY_REGION in region_names and usable[region_names.index(PRIMARY_REGION)]:
        weights[region_names.index(PRIMARY_REGION)] = 1.0
    else:
        weights[usable] = 1.0 / max(int(usable.sum()), 1)
    return weights


def region_diagnostics(
    spec: Spectrogram, usable: np.ndarray, weights: np.ndarray, track_hz: np.ndarray
) -> RegionFusion:
    """Each usable region's SNR at the track and its own whole-record peak, beside its weight."""
    snr = np.full(usable.shape, np.nan)
    own = np.full(usable.shape, np.nan)
    band = np.flatnonzero((spec.f_hz >= HR_LOW_HZ) & (spec.f_hz <= HR_HIGH_HZ))
    for r in np.flatnonzero(usable):
        snr[r] = to_db(float(np.mean(snr_at_track(spec.power[r], spec.f_hz, track_hz))))
        whole = spec.power[r].mean(axis=0)
        own[r] = parabolic_peak(spec.f_hz, whole, int(band[np.argmax(whole[band])])) * 60.0
    return RegionFusion(snr_db=snr, weights=weights, hr_bpm=own)


def fused_spectrogram(spec: Spectrogram, weights: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Weighted mean of the regions' window spectra [R, W, F] → [W, F], times the motion `gain` [F]."""
    return np.tensordot(weights / max(float(weights.sum()), 1e-300), spec.power, axes=(0, 0)) * gain


def aligned_sum(pulses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of region pulses [R, N], each flipped to agree in sign with the heaviest region."""
    ref = pulses[int(np.argmax(weights))]
    signs = np.where(pulses @ ref >= 0, 1.0, -1.0)
    return unit_std((weights * signs) @ pulses)


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
    m_f_hz, m_power = welch_psd(motion, fs_hz, segment_s)
    m_total = np.interp(f_hz, m_f_hz, m_power.sum(axis=0))
    peak = float(m_total.max())
    if peak <= 0:
        return np.ones_like(f_hz), level
    gain_strength = min((level / MOTION_REF) ** 2, 50.0)
    return 1.0 / (1.0 + gain_strength * m_total / peak), level


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


def is_harmonic_trap(
    f_hz: np.ndarray, power: np.ndarray, hr_hz: float, pulse: np.ndarray, fs_hz: float
) -> bool:
    """Whether the heart rate `hr_hz` found is really the harmonic of a pulse at half of it.

    A pulse wave with a strong diastolic wave can put more power at 2·HR than at HR. Then the true rate is
    still a clear spectral line of its own: the half-rate is a local maximum of the whole-record spectrum
    `power` [F] standing SUBHARMONIC_PROMINENCE × above the band's median power, and the waveform repeats
    better at two periods than at one (`periodicity_gain`); and the supposed harmonic is a very clean line
    (HARMONIC_LINE_PROMINENCE), since only a clean pulse shows its shape. Noise near half a real rate
    (common on compressed video) is none of these: the test looks for evidence of a trap, not for power
    at half the rate.
    """
    half = hr_hz / 2.0
    if half < HR_LOW_HZ:
        return False
    band = (f_hz >= HR_LOW_HZ) & (f_hz <= HR_HIGH_HZ)
    floor = float(np.median(power[band]))
    if float(np.interp(hr_hz, f_hz, power)) < HARMONIC_LINE_PROMINENCE * floor:
        return False
    near = np.flatnonzero(np.abs(f_hz - half) <= 0.08)
    if near.size == 0:
        return False
    j = int(near[np.argmax(power[near])])
    if not (0 < j < f_hz.shape[0] - 1 and power[j] >= max(power[j - 1], power[j + 1])):
        return False
    return bool(
        power[j] >= SUBHARMONIC_PROMINENCE * floor
        and periodicity_gain(pulse, fs_hz, hr_hz) >= PERIODICITY_GAIN
    )


def record_peak_hz(pulse: np.ndarray, fs_hz: float, track_hz: np.ndarray) -> float:
    """The whole-record heart rate: the periodogram peak of `pulse` weighted by where the track lived.

    The periodogram of the whole record is the reference estimator of rPPG evaluations (and resolves
    the rate finely); the track's occupancy (a Gaussian of OCCUPANCY_WIDTH_BPM per window) keeps the
    search on the pulse, so a noise line elsewhere in the band cannot win.
    """
    f_hz, power = hann_power(pulse, fs_hz, nfft_for(fs_hz, pulse.shape[0], 1.0 / 600.0))
    width_hz = OCCUPANCY_WIDTH_BPM / 60.0
    occupancy = np.exp(-0.5 * ((f_hz[:, None] - track_hz[None, :]) / width_hz) ** 2).sum(axis=1)
    score = power * occupancy * ((f_hz >= HR_LOW_HZ) & (f_hz <= HR_HIGH_HZ))
    return parabolic_peak(f_hz, score, int(np.argmax(score)))


def track_support(fused: np.ndarray, f_hz: np.ndarray, track_hz: np.ndarray) -> float:
    """Share of windows whose own highest peak lies within SUPPORT_TOLERANCE_BPM of the track."""
    band = np.flatnonzero((f_hz >= HR_LOW_HZ) & (f_hz <= HR_HIGH_HZ))
    own = f_hz[band][np.argmax(fused[:, band], axis=1)]
    return float(np.mean(np.abs(own - track_hz) * 60.0 <= SUPPORT_TOLERANCE_BPM))


def whole_snr_db(f_hz: np.ndarray, power: np.ndarray, hr_hz: float) -> float:
    """de Haan & Jeanne SNR of a whole-record spectrum at `hr_hz`."""
    return template_snr_db(f_hz, power, hr_hz, SNR_LOW_HZ, SNR_HIGH_HZ)


def split_half_coherence(
    left: np.ndarray, right: np.ndarray, fs_hz: float, track_hz: np.ndarray, window_s: float
) -> float:
    """Coherence (real part, -1..1) of two disjoint regions' pulses [N] along the track.

    Per window (as the spectrogram's), the Hann-windowed Fourier coefficient of each pulse at the track's
    frequency; the coherence is Re Σ L·R* / √(Σ|L|² Σ|R|²). The two halves of a face share no pixel,
    so no compression block and no sensor noise, while their pulse is the same wave in the same phase:
    a pulse gives +0.6..+1, independent noise about 0 ± 1/√(windows). (An artefact that moves the whole
    face, like a head bob or a flickering lamp, is common to both halves too: this is one piece of
    evidence among several, not a proof.)
    """
    n = left.shape[0]
    length = min(n, round(window_s * fs_hz))
    hop = max(1, round(TRACK_HOP_S * fs_hz))
    starts = np.arange(0, n - length + 1, hop)
    phase = np.exp(-2j * np.pi * np.outer(track_hz[: starts.shape[0]], np.arange(length) / fs_hz))
    window = np.hanning(length)
    segments_left = np.stack([left[s : s + length] for s in starts]) * window
    segments_right = np.stack([right[s : s + length] for s in starts]) * window
    a = np.sum(segments_left * phase, axis=1)
    b = np.sum(segments_right * phase, axis=1)
    denominator = float(np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2)))
    return float(np.real(np.sum(a * np.conj(b))) / denominator) if denominator > 0 else 0.0


def track_sharpness_db(power: np.ndarray, f_hz: np.ndarray, track_hz: np.ndarray) -> float:
    """How line-like the track's peak is: power within 0.08 Hz of it over power 0.15-0.4 Hz away (dB, mean
    over windows). A pulse is a line a few bins wide; the slow artefacts of motion and compression are
    humps as wide as they are high, and a path through a hump has no sharper peak than its shoulders."""
    offset = np.abs(f_hz[None, :] - track_hz[:, None])
    near = offset <= 0.08
    ring = (offset >= 0.15) & (offset <= 0.4)
    ratio = (power * near).sum(axis=1) / np.maximum((power * ring).sum(axis=1), 1e-12)
    return to_db(float(np.mean(ratio)))


def track_roughness_bpm(track_hz: np.ndarray) -> float:
    """Median change of the track between consecutive windows, in bpm (a heart rate drifts smoothly)."""
    if track_hz.shape[0] < 2:
        return 0.0
    return float(np.median(np.abs(np.diff(track_hz))) * 60.0)


def held_out_track(track_hz: np.ndarray, window_s: float) -> np.ndarray:
    """For each window, the track predicted from the nearest windows that share no sample with it.

    A statistic measured at the track of the same window is biased on noise (the track went where the
    noise happened to be large); at a rate predicted from disjoint data it is not. A record too short
    for disjoint neighbours uses the farthest windows it has (less overlap, less bias); one window alone
    has no prediction (NaN).
    """
    lag = max(1, round(window_s / TRACK_HOP_S))
    n = track_hz.shape[0]
    out = np.full(n, np.nan)
    if n < 2:
        return out
    for w in range(n):
        before, after = w - lag, w + lag
        neighbours = [track_hz[i] for i in (before, after) if 0 <= i < n]
        if not neighbours:  # the record is shorter than two windows apart: take its far end
            neighbours = [track_hz[0] if w >= n - 1 - w else track_hz[n - 1]]
        out[w] = float(np.mean(neighbours))
    return out
