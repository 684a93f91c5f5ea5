"""Property tests: confidence is monotone in noise for any seed and heart rate."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.inference import infer
from tests.simulate_traces import simulate


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(0, 10_000), hr_bpm=st.floats(55.0, 110.0))
def test_confidence_decreases_as_noise_increases(seed: int, hr_bpm: float) -> None:
    """Same pulse, same artefacts, more sensor noise: confidence may only fall, from clearly reliable to
    clearly unreliable. Slack: 0.03 for estimator jitter, and once the signal is lost both values only
    have to stay in the unreliable floor (≤ 0.1), where the spectral peak is noise and wanders. (The
    tracker still reads a 30 s pulse at noise 1.5 correctly, so the ladder runs on to 6, where it is lost.)"""
    confidences = []
    for noise_std in (0.03, 0.2, 0.5, 1.5, 6.0):
        m, _ = simulate(hr_bpm=hr_bpm, noise_std=noise_std, seed=seed)
        confidences.append(infer(m).vitals["confidence"])
    for lower, higher in itertools.pairwise(confidences):
        assert higher <= max(lower + 0.03, 0.1), confidences
    assert confidences[0] >= 0.6, confidences
    assert confidences[-1] <= 0.2, confidences  # a weak pulse remains; pure noise is tested separately
