"""The HTML report as a person reads it: every plot labelled with its unit, one quantity per axis, legends
beside the data rather than over it, and an unreliable heart rate that looks unreliable everywhere.

The results come from the real embedded server on simulated traces (with and without a pulse); the
figures are the ones the report embeds, inspected after matplotlib has laid them out.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from contract.tensor import to_bytes
from server import start_embedded
from tests.simulate_traces import simulate
from transport import SessionClient
from vitalcam.report import render_report, report_figures
from vitalcam.session import Outcome, QualityTimeline


def outcome_of(*, with_pulse: bool) -> Outcome:
    measurement, _ = simulate(with_pulse=with_pulse, noise_std=0.3 if not with_pulse else 0.05, seed=3)
    with start_embedded() as server, SessionClient(server.base_url, server.api_key) as client:
        result = client.measure(to_bytes(measurement))
    n = measurement.n_frames
    t_s = measurement.t_s - measurement.t_s[0]
    speed = np.abs(np.sin(t_s)) * 0.2
    timeline = QualityTimeline(t_s, np.ones(n, bool), np.full(n, 120.0), speed)
    return Outcome(result, measurement, len(to_bytes(measurement)), timeline, server.base_url, True, 0)


@pytest.fixture(scope="module")
def good() -> Outcome:
    outcome = outcome_of(with_pulse=True)
    assert outcome.result.vitals is not None and outcome.result.vitals.confidence >= 0.5
    return outcome


@pytest.fixture(scope="module")
def unreliable() -> Outcome:
    outcome = outcome_of(with_pulse=False)
    assert not outcome.result.is_fallback and outcome.result.vitals is not None
    assert outcome.result.vitals.confidence < 0.5
    return outcome


def drawn(outcome: Outcome) -> Iterator[tuple[str, Figure]]:
    figures, failure = report_figures(outcome)
    assert failure == ""
    try:
        for title, fig in figures.items():
            fig.canvas.draw()  # lay out ticks, labels and legends as the PNG will show them
            yield title, fig
    finally:
        for fig in figures.values():
            plt.close(fig)


UNITLESS_LABELS = {"face found"}  # a yes/no axis: its ticks say "no" / "yes"


def test_every_axis_is_labelled_with_its_unit_and_legends_stay_off_the_data(good: Outcome) -> None:
    titles = []
    for title, fig in drawn(good):
        titles.append(title)
        axes = fig.get_axes()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # Agg has one, the base class not
        assert axes[-1].get_xlabel().endswith(("(s)", "(beats/min)")), title
        ylabels = [ax.get_ylabel() for ax in axes]
        assert len(set(ylabels)) == len(ylabels), f"{title}: one quantity per axis, got {ylabels}"
        for ax, ylabel in zip(axes, ylabels, strict=True):
            assert ylabel, f"{title}: an axis without a label"
            assert ylabel in UNITLESS_LABELS or ylabel.rstrip().endswith(")"), (
                f"{title}: {ylabel!r} has no unit"
            )
            legend = ax.get_legend()
            assert legend is not None, f"{title}: {ylabel} has no legend"
            box, area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            assert box.x0 >= area.x1, f"{title}: the legend of {ylabel!r} overlaps the plot"
    assert titles == [
        "Pulse waveform",
        "Pulse spectrum",
        "Heart-rate track",
        "Breathing signal",
        "Quality timeline",
    ]


def test_quality_timeline_has_one_axis_per_quantity(good: Outcome) -> None:
    quality = dict(drawn(good))["Quality timeline"]
    labels = [ax.get_ylabel().replace("\n", " ") for ax in quality.get_axes()]
    assert labels == ["face found", "brightness (luma 0-255)", "speed (face widths/s)"]
    speed_ax = quality.get_axes()[2]
    _low, high = speed_ax.get_ylim()
    assert high < 5, "face speed is drawn on its own scale, not flattened beside brightness"


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.get_axes() if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_the_dashed_heart_rate_line_is_named_in_the_legend(good: Outcome, unreliable: Outcome) -> None:
    hr = good.result.vitals.heart_rate if good.result.vitals else None
    figures = dict(drawn(good))
    for title in ("Pulse spectrum", "Heart-rate track"):
        assert any(t.startswith("heart rate ") and "bpm" in t for t in legend_texts(figures[title])), title
    assert any(f"{hr:.1f} bpm" in t for t in legend_texts(figures["Heart-rate track"]))  # the reported number
    figures = dict(drawn(unreliable))
    for title in ("Pulse spectrum", "Heart-rate track"):
        texts = legend_texts(figures[title])
        assert any("UNRELIABLE" in t for t in texts) and not any(t.startswith("heart rate") for t in texts)


def test_the_unreliable_banner_is_shown_only_when_the_heart_rate_is_unreliable(
    good: Outcome, unreliable: Outcome
) -> None:
    bad_html = render_report(unreliable)
    assert '<p class="unreliable">UNRELIABLE' in bad_html and '<tr class="unreliable">' in bad_html
    good_html = render_report(good)
    assert '<p class="unreliable">' not in good_html and '<tr class="unreliable">' not in good_html
    assert good_html.count("data:image/png;base64,") == 5
