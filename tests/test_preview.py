"""The live preview as the person in front of the camera reads it, drawn offscreen: the step and a
countdown, the live pulse rate, how to cancel, and hints only for what the measurement will suffer from."""

from __future__ import annotations

import numpy as np

from capture.preview import CANCEL_TEXT, Overlay, draw_overlay, pulse_label, status_line
from preprocess import quality
from preprocess.quality import FRAME_RATE_UNSTABLE, QualityState, QualityThresholds, frame_warnings


def test_the_preview_says_the_step_the_time_left_the_pulse_and_how_to_cancel() -> None:
    overlay = Overlay(phase="CAPTURING", remaining_s=12.4, pulse_bpm=71.6, pulse=np.sin(np.arange(90) / 4))
    assert status_line(overlay) == "CAPTURING  12 s left"
    assert pulse_label(overlay) == "pulse ~72 bpm (preview)"
    assert CANCEL_TEXT == "press q to cancel"
    assert status_line(Overlay(phase="READINESS")) == "READINESS"  # no countdown before capturing
    assert pulse_label(Overlay(phase="READINESS")) == ""


def test_the_cancel_line_and_the_rate_are_drawn() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    plain = draw_overlay(image, Overlay(phase="CAPTURING", progress=0.5))
    bottom_left = (slice(400, 470), slice(0, 200))
    assert plain[bottom_left].any()  # "press q to cancel" above the progress bar
    assert not draw_overlay(image, Overlay(progress=0.5))[bottom_left].any()  # nothing running, no line
    with_rate = draw_overlay(image, Overlay(phase="CAPTURING", pulse_bpm=72.0))
    above_strip = (slice(350, 410), slice(420, 640))
    assert with_rate[above_strip].any() and not plain[above_strip].any()
    counting = draw_overlay(image, Overlay(phase="CAPTURING", remaining_s=9.0))
    top = (slice(0, 30), slice(0, 640))
    assert (counting[top] > 0).sum() > (plain[top] > 0).sum()  # "9 s left" beside the step


def state(lost_share: float, jitter: float) -> QualityState:
    return QualityState(
        brightness_luma=120.0,
        clipped_share=0.0,
        face_present=True,
        face_area_share=0.1,
        face_speed_widths_per_s=0.0,
        interval_jitter=jitter,
        lost_share=lost_share,
    )


def test_wobbling_frame_times_raise_no_hint_but_lost_frames_do() -> None:
    """A loaded machine delivers 30 fps at 33 ms ± 15 ms: every frame keeps its real timestamp and the
    engine resamples, so nothing is lost and no hint may nag. A gap the engine cannot bridge is lost."""
    rng = np.random.default_rng(1)
    wobbly = np.clip(rng.normal(1 / 30, 0.015, 60), 0.005, None)
    assert wobbly.std() / wobbly.mean() > 0.25  # the old rule fired on exactly this
    assert quality.lost_share(wobbly) == 0.0
    thresholds = QualityThresholds()
    codes = [
        w.code
        for w in frame_warnings(state(0.0, 0.4), (0.0, 0.0), thresholds, face_mode=True, jitter_known=True)
    ]
    assert FRAME_RATE_UNSTABLE not in codes
    gap = np.r_[np.full(40, 1 / 30), 0.8, np.full(19, 1 / 30)]  # a 0.8 s stall in 2.8 s
    lost = quality.lost_share(gap)
    assert 0.25 < lost < 0.35
    codes = [
        w.code
        for w in frame_warnings(state(lost, 0.1), (0.0, 0.0), thresholds, face_mode=True, jitter_known=True)
    ]
    assert FRAME_RATE_UNSTABLE in codes
    slow = np.full(60, 1 / 10)  # a steady 10 fps camera is slow, not losing frames
    assert quality.lost_share(slow) == 0.0


def test_the_monitors_timing_statistics_equal_a_fresh_computation_over_its_window() -> None:
    from preprocess.monitor import QualityMonitor
    from preprocess.pixels import BgrPixels

    rng = np.random.default_rng(3)
    pixels = BgrPixels(np.full((48, 64, 3), 120, np.uint8))
    monitor = QualityMonitor(QualityThresholds(), face_mode=True)
    # A steady 30 fps stream with last-bit pts noise, then stutters and gaps: both the kept and the
    # recomputed statistics are exercised.
    steady = 1 / 30 + rng.choice([-1e-17, 0.0, 1e-17], 200)
    bumpy = rng.choice([1 / 30, 1 / 15, 0.2], 120, p=[0.8, 0.15, 0.05])
    window: list[float] = []
    for interval_s in np.concatenate([steady, bumpy, steady]).tolist():
        monitor.frame_interval(interval_s)
        window = [*window, round(interval_s, 6)][-60:]
        state, _ = monitor.observe(pixels, (10.0, 10.0, 20.0, 20.0), None)
        if len(window) >= 10:
            assert state.interval_jitter == quality.interval_jitter(window)
            assert state.lost_share == quality.lost_share(window)
    assert state.interval_jitter < 1e-9  # back to steady: the window holds one value again
