"""Conditioning: put every trace on one uniform time grid and measure how much of it is real data.

Cameras drop frames and timestamp them irregularly, so the nominal fps is never trusted: the grid comes
from the capture timestamps, short gaps (a blink, a dropped frame, a landmark miss) are bridged by linear
interpolation, and longer gaps are interpolated only for continuity while being marked invalid so that
they count against coverage and are silenced in the pulse signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from contract.limits import BRIDGED_GAP_INTERVALS, MAX_BRIDGED_GAP_S, MIN_USABLE_S
from contract.tensor import MAX_FPS as MAX_FPS_HZ
from contract.tensor import MIN_FPS as MIN_FPS_HZ
from contract.tensor import Measurement
from server.inference.errors import InferenceFailed

MIN_COVERAGE: Final = 0.70
MAX_GRID_FS_HZ: Final = 30.0
MIN_BRIDGE_S: Final = MAX_BRIDGED_GAP_S  # shared with the live frame-rate hint


@dataclass(frozen=True, slots=True)
class Conditioned:
    """Traces on a uniform grid. R regions, N grid samples.

    `rgb` [R, N, 3] float64 (0..255), `valid` [R, N] True where the sample is backed by real frames no
    further apart than `max_bridge_s`; `face_box` [N, 4] with `box_valid` [N]; `coverage` is the best
    region's share of valid grid time (0..1); `fps_hz` is measured from the timestamps.
    """

    t_s: np.ndarray
    fs_hz: float
    rgb: np.ndarray
    valid: np.ndarray
    region_coverage: np.ndarray
    face_box: np.ndarray
    box_valid: np.ndarray
    coverage: float
    duration_s: float
    usable_s: float
    fps_hz: float
    max_bridge_s: float
    frame_interval_jitter_ms: float


def check_timestamps(t_s: np.ndarray) -> np.ndarray:
    """Return `t_s` as float64 or raise INVALID_TIMESTAMPS (not 1-D, non-finite, not increasing, odd rate)."""
    t = np.asarray(t_s, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] < 2:
        raise InferenceFailed("INVALID_TIMESTAMPS", "t_s must be 1-D with at least 2 frames")
    if not np.all(np.isfinite(t)):
        raise InferenceFailed("INVALID_TIMESTAMPS", "t_s contains NaN or inf")
    dt = np.diff(t)
    if not np.all(dt > 0):
        first = int(np.argmax(dt <= 0))
        raise InferenceFailed("INVALID_TIMESTAMPS", f"t_s is not strictly increasing at frame {first + 1}")
    fps = 1.0 / float(np.median(dt))
    if not MIN_FPS_HZ <= fps <= MAX_FPS_HZ:
        raise InferenceFailed(
            "INVALID_TIMESTAMPS", f"median frame rate {fps:.1f} fps outside {MIN_FPS_HZ:g}..{MAX_FPS_HZ:g}"
        )
    return t


def covered_mask(grid_s: np.ndarray, sample_t_s: np.ndarray, max_gap_s: float) -> np.ndarray:
    """True for grid points that lie between two real samples no more than `max_gap_s` apart.

    Points within half a gap of the first or last sample count as covered (edge frames).
    """
    if sample_t_s.shape[0] == 0:
        return np.zeros(grid_s.shape, dtype=bool)
    idx = np.searchsorted(sample_t_s, grid_s)
    prev_t = sample_t_s[np.clip(idx - 1, 0, None)]
    next_t = sample_t_s[np.clip(idx, None, sample_t_s.shape[0] - 1)]
    exact = next_t == grid_s
    inside = (idx > 0) & (idx < sample_t_s.shape[0])
    covered = inside & (next_t - prev_t <= max_gap_s)
    edge = (np.abs(grid_s - sample_t_s[0]) <= max_gap_s / 2) | (
        np.abs(grid_s - sample_t_s[-1]) <= max_gap_s / 2
    )
    return covered | exact | edge


def _box_smooth(values: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` frames that ignores invalid frames: the anti-alias step before decimation."""
    if width <= 1:
        return values
    kernel = np.ones(width)
    filled = np.where(valid[:, None], values, 0.0)
    counts = np.convolve(valid.astype(np.float64), kernel, mode="same")
    sums = np.stack([np.convolve(filled[:, c], kernel, mode="same") for c in range(values.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[:, None] > 0, sums / counts[:, None], np.nan)


def _resample(
    t_s: np.ndarray, values: np.ndarray, valid: np.ndarray, grid_s: np.ndarray, smooth: int, max_gap_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate the valid rows of `values` [T, C] onto `grid_s`; return ([N, C], covered [N])."""
    n_channels = values.shape[1]
    if int(valid.sum()) < 2:
        return np.zeros((grid_s.shape[0], n_channels)), np.zeros(grid_s.shape, dtype=bool)
    smoothed = _box_smooth(values.astype(np.float64), valid, smooth)
    tv = t_s[valid]
    out = np.empty((grid_s.shape[0], n_channels))
    for c in range(n_channels):
        out[:, c] = np.interp(grid_s, tv, smoothed[valid, c])
    return out, covered_mask(grid_s, tv, max_gap_s)


def condition(m: Measurement, min_usable_s: float = MIN_USABLE_S) -> Conditioned:
    """Resample a measurement onto a uniform grid; raise InferenceFailed when it cannot support vitals.

    Order of checks: INVALID_TIMESTAMPS, NO_FACE, TOO_SHORT (span), LOW_COVERAGE, TOO_SHORT (usable time).
    `min_usable_s` is the product's 15 s; dataset evaluation lowers it to score shorter windows.
    """
    t = check_timestamps(m.t_s)
    n_frames = t.shape[0]
    rgb = np.asarray(m.rgb, dtype=np.float64)
    skin = np.asarray(m.skin_px)
    box = np.asarray(m.face_box, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[0] != n_frames or rgb.shape[2] != 3 or skin.shape != rgb.shape[:2]:
        raise InferenceFailed("INTERNAL", f"rgb {rgb.shape} / skin_px {skin.shape} do not match t_s")
    if box.shape != (n_frames, 4):
        raise InferenceFailed("INTERNAL", f"face_box {box.shape} does not match t_s")

    dt = np.diff(t)
    median_dt = float(np.median(dt))
    fps_hz = 1.0 / median_dt
    duration_s = float(t[-1] - t[0])
    region_valid = (skin > 0) & np.all(np.isfinite(rgb), axis=2)  # [T, R]
    if int(region_valid.sum(axis=0).max()) < 2:
        raise InferenceFailed("NO_FACE", "no skin region was found in any frame")
    if duration_s < min_usable_s:
        raise InferenceFailed("TOO_SHORT", f"{duration_s:.1f} s recorded, at least {min_usable_s:g} s needed")

    fs_hz = min(fps_hz, MAX_GRID_FS_HZ)
    smooth = max(1, round(fps_hz / fs_hz))
    n_grid = int(np.floor(duration_s * fs_hz)) + 1
    grid = t[0] + np.arange(n_grid) / fs_hz
    max_bridge_s = max(MIN_BRIDGE_S, BRIDGED_GAP_INTERVALS * median_dt)

    n_regions = rgb.shape[1]
    rgb_grid = np.empty((n_regions, n_grid, 3))
    valid_grid = np.empty((n_regions, n_grid), dtype=bool)
    for r in range(n_regions):
        rgb_grid[r], valid_grid[r] = _resample(
            t, rgb[:, r, :], region_valid[:, r], grid, smooth, max_bridge_s
        )
    box_ok = np.all(np.isfinite(box), axis=1)
    box_grid, box_valid = _resample(t, box, box_ok, grid, smooth, max_bridge_s)

    region_coverage = valid_grid.mean(axis=1)
    coverage = float(region_coverage.max())
    if coverage < MIN_COVERAGE:
        raise InferenceFailed(
            "LOW_COVERAGE",
            f"face regions valid for {coverage:.0%} of the measurement, {MIN_COVERAGE:.0%} needed",
        )
    usable_s = coverage * duration_s
    if usable_s < min_usable_s:
        raise InferenceFailed("TOO_SHORT", f"{usable_s:.1f} s usable, at least {min_usable_s:g} s needed")
    jitter_ms = float(np.std(dt[dt <= max_bridge_s]) * 1000.0) if np.any(dt <= max_bridge_s) else 0.0
    return Conditioned(
        t_s=grid,
        fs_hz=float(fs_hz),
        rgb=rgb_grid,
        valid=valid_grid,
        region_coverage=region_coverage,
        face_box=box_grid,
        box_valid=box_valid,
        coverage=coverage,
        duration_s=duration_s,
        usable_s=usable_s,
        fps_hz=fps_hz,
        max_bridge_s=max_bridge_s,
        frame_interval_jitter_ms=jitter_ms,
    )
