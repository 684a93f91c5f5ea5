"""The shared contract: POS, the vitals table and its fallback draw, the limits every side applies."""

from __future__ import annotations

import random

import numpy as np
import pytest

from contract.limits import MAX_AGE_YEARS, MIN_AGE_YEARS, age_is_valid
from contract.pos import pos
from contract.vitals import BY_KEY, MIN_DIASTOLIC_MMHG, VITAL_KEYS, VITALS, draw_fallback


def test_pos_recovers_a_pulse_under_a_slow_illumination_change() -> None:
    fs_hz, hr_hz = 30.0, 1.3
    t_s = np.arange(0, 20, 1 / fs_hz)
    light = 1.0 + 0.2 * t_s / t_s[-1]  # a 20 % brightening over the record, on all channels alike
    pulse = 0.003 * np.sin(2 * np.pi * hr_hz * t_s)
    skin = np.array([180.0, 120.0, 100.0])
    rgb = light[:, None] * skin * (1.0 + pulse[:, None] * np.array([0.33, 0.77, 0.53]))
    out = pos(rgb, fs_hz)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    f_hz = np.fft.rfftfreq(out.size, 1 / fs_hz)
    band = (f_hz > 0.5) & (f_hz < 4.0)
    assert f_hz[band][np.argmax(spectrum[band])] == pytest.approx(hr_hz, abs=0.06)
    # A grey-level change alone lies in the plane POS removes.
    assert np.abs(pos(light[:, None] * skin, fs_hz)).max() < 1e-9


def test_pos_of_a_trace_shorter_than_its_window_is_silent() -> None:
    assert not pos(np.full((20, 3), 100.0), 30.0).any()


def test_the_fallback_draw_follows_the_table_and_is_reproducible() -> None:
    ranges = {v.fallback_key: (60.0, 90.0) for v in VITALS} | {"systolic_bp": (109.0, 134.0)}
    ranges["diastolic_bp_offset"] = (51.0, 66.0)
    first = draw_fallback(ranges, random.Random("session-1"))
    assert first == draw_fallback(ranges, random.Random("session-1"))
    assert first != draw_fallback(ranges, random.Random("session-2"))
    assert list(first) == list(VITAL_KEYS)
    for key, value in first.items():
        assert value is not None
        assert isinstance(value, int) == (BY_KEY[key].decimals == 0)
    systolic, diastolic = first["systolic_bp"], first["diastolic_bp"]
    assert systolic is not None and diastolic is not None
    assert 109 <= systolic <= 134
    assert systolic - 66 <= diastolic <= systolic - 51


def test_diastolic_never_drops_below_the_floor_and_missing_ranges_are_none() -> None:
    drawn = draw_fallback(
        {"systolic_bp": (40.0, 40.0), "diastolic_bp_offset": (30.0, 30.0)}, random.Random(1)
    )
    assert drawn["diastolic_bp"] == MIN_DIASTOLIC_MMHG
    assert drawn["heart_rate"] is None


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        (MIN_AGE_YEARS, True),
        (MAX_AGE_YEARS, True),
        (0, False),
        (MAX_AGE_YEARS + 1, False),
        (True, False),
        (35.0, False),
    ],
)
def test_one_age_rule(age: object, valid: bool) -> None:
    assert age_is_valid(age) is valid


def test_prior_vitals_are_the_ones_no_rgb_camera_can_measure() -> None:
    assert {v.key for v in VITALS if v.kind == "prior"} == {"spo2", "systolic_bp", "diastolic_bp"}
