"""A self-contained HTML report of one measurement: the signals behind the numbers, for a person to judge them.

The plots are recomputed on the device from the same tensor that was uploaded, with the reference
engine's `analyze`, so the report works with any backend. Figures are PNGs embedded as data URIs: the file
opens offline and can be mailed as one attachment.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contract import __version__
from contract.limits import RELIABLE_CONFIDENCE
from vitalcam.console import privacy_summary, quality_warnings, vital_rows
from vitalcam.session import Outcome

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from preprocess.quality import QualityThresholds

SECTIONS = ("Pulse waveform", "Pulse spectrum", "Heart-rate track", "Breathing signal", "Quality timeline")


def _figure_png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _legend_outside(ax: Axes) -> None:
    """The legend to the right of the plot, where it can never cover a data point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _plots(outcome: Outcome) -> tuple[dict[str, str], str]:
    """Section title -> base64 PNG, and why the signal plots are missing when the engine could not analyse."""
    from matplotlib import pyplot as plt

    figures, failure = report_figures(outcome)
    images = {}
    for title, fig in figures.items():
        images[title] = _figure_png(fig)
        plt.close(fig)
    return images, failure


def report_figures(outcome: Outcome) -> tuple[dict[str, Figure], str]:
    """Section title -> matplotlib figure (the caller closes them), and why signal plots are missing.

    Every axis has a label with its unit and carries one quantity; legends sit outside the data.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from preprocess.quality import QualityThresholds
    from server.inference import InferenceFailed, analyze

    failure = ""
    try:
        analysis = analyze(outcome.measurement)
    except InferenceFailed as exc:
        analysis = None
        failure = str(exc)
    figures: dict[str, Figure] = {}

    def plot(title: str, draw: Callable[[Axes], None], height_in: float = 2.4) -> None:
        fig, ax = plt.subplots(figsize=(9, height_in))
        draw(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        figures[title] = fig

    if analysis is not None:
        trusted = analysis.confidence["heart_rate"] >= RELIABLE_CONFIDENCE
        hr_label = (
            f"heart rate {analysis.heart.hr_bpm:.1f} bpm"
            if trusted
            else f"strongest peak {analysis.heart.hr_bpm:.1f} bpm (UNRELIABLE)"
        )
        hr_colour = "crimson" if trusted else "purple"

        def pulse(ax: Axes) -> None:
            ax.plot(analysis.pulse.t_s, analysis.pulse.signal, lw=0.8, color="crimson", label="pulse (POS)")
            beats = np.asarray(analysis.beats.t_s)
            if beats.size:
                ax.plot(
                    beats,
                    np.interp(beats, analysis.pulse.t_s, analysis.pulse.signal),
                    "k.",
                    ms=4,
                    label="detected beats",
                )
            ax.set_xlabel("time (s)")
            ax.set_ylabel("pulse (std. dev.)")
            _legend_outside(ax)

        def spectrum(ax: Axes) -> None:
            ax.plot(analysis.spectrum.freq_bpm, analysis.spectrum.power, color="navy", label="pulse spectrum")
            ax.axvline(analysis.heart.hr_bpm, color=hr_colour, ls="--", label=hr_label)
            ax.set_xlabel("frequency (beats/min)")
            ax.set_ylabel("power (relative, peak = 1)")
            ax.set_xlim(30, 220)
            _legend_outside(ax)

        def track(ax: Axes) -> None:
            ax.plot(analysis.heart.track_t_s, analysis.heart.track_bpm, "o-", ms=3, label="10 s windows")
            ax.axhline(analysis.heart.hr_bpm, color=hr_colour, ls="--", label=hr_label)
            ax.set_xlabel("window centre (s)")
            ax.set_ylabel("heart rate (bpm)")
            _legend_outside(ax)

        def breathing(ax: Axes) -> None:
            ax.plot(
                analysis.pulse.t_s,
                analysis.breathing.signal,
                color="teal",
                label=f"{analysis.breathing.rr_bpm:.0f} breaths/min",
            )
            ax.set_xlabel("time (s)")
            ax.set_ylabel("breathing (a.u.)")
            _legend_outside(ax)

        plot("Pulse waveform", pulse)
        plot("Pulse spectrum", spectrum)
        plot("Heart-rate track", track)
        plot("Breathing signal", breathing)
    figures["Quality timeline"] = _quality_figure(outcome, QualityThresholds())
    return figures, failure


def _quality_figure(outcome: Outcome, thresholds: QualityThresholds) -> Figure:
    """Face presence, brightness and face speed on three axes over one time axis: their scales differ by
    orders of magnitude, so sharing an axis flattened every line but the largest."""
    from matplotlib import pyplot as plt

    timeline = outcome.timeline
    fig, (face_ax, light_ax, motion_ax) = plt.subplots(3, 1, figsize=(9, 4.2), sharex=True)
    face_ax.step(
        timeline.t_s, timeline.face_present.astype(float), where="post", color="green", label="face found"
    )
    face_ax.set_ylim(-0.1, 1.1)
    face_ax.set_yticks([0, 1], ["no", "yes"])
    face_ax.set_ylabel("face found")
    face_ax.set_title("Quality timeline")
    light_ax.plot(timeline.t_s, timeline.brightness, color="orange", label="face brightness")
    light_ax.axhline(thresholds.low_light_luma, color="grey", ls="--", label="too dark below")
    light_ax.set_ylabel("brightness\n(luma 0-255)")
    motion_ax.plot(timeline.t_s, timeline.face_speed, color="purple", label="face speed")
    motion_ax.axhline(
        thresholds.motion_face_widths_per_s, color="grey", ls="--", label="too much motion above"
    )
    motion_ax.set_ylabel("speed\n(face widths/s)")
    motion_ax.set_xlabel("time (s)")
    for ax in (face_ax, light_ax, motion_ax):
        ax.grid(alpha=0.3)
        _legend_outside(ax)
    return fig


def render_report(outcome: Outcome) -> str:
    """The report as one HTML string."""
    images, failure = _plots(outcome)
    result = outcome.result
    rows = "".join(
        '<tr class="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>'.format(
            r["kind_code"],
            html.escape(r["label"]),
            html.escape(r["value_text"]),
            html.escape(r["unit"]),
            r["confidence_text"],
            html.escape(r["kind"]),
        )
        for r in vital_rows(result)
    )
    banner = ""
    hr_row = next((r for r in vital_rows(result) if r["key"] == "heart_rate"), None)
    if hr_row is not None and hr_row["kind_code"] == "unreliable":
        banner = (
            '<p class="unreliable">UNRELIABLE: the heart rate could not be measured with confidence '
            f"(confidence {html.escape(hr_row['confidence_text'])}). The value shown in parentheses is the "
            "strongest candidate in the signal, not a reading; the plots below show why.</p>"
        )
    banner += "".join(
        f'<p class="note">Note: {html.escape(m)}</p>' for m in (*outcome.notes, *quality_warnings(result))
    )
    if result.is_fallback:
        quality = result.quality or {}
        banner = (
            '<p class="fallback">NOT A MEASUREMENT: fallback values (confidence 0.0), reason '
            f"{html.escape(str(quality.get('reason')))}: {html.escape(str(quality.get('message', '')))}</p>"
        )
    sections = []
    for title in SECTIONS:
        if title in images:
            body = f'<img alt="{html.escape(title)}" src="data:image/png;base64,{images[title]}">'
        else:
            body = f"<p>Not available: {html.escape(failure or 'no usable pulse signal')}</p>"
        sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vitalcam report {html.escape(result.session_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
.fallback {{ background: #fdd; border: 2px solid #c00; padding: 8px; font-weight: bold; }}
.unreliable {{ background: #f6e6f6; border: 2px solid #a0a; padding: 8px; font-weight: bold; }}
.note {{ background: #fff6dd; border: 1px solid #c90; padding: 6px; }}
tr.measured td {{ color: #060; }} tr.prior td {{ color: #960; }} tr.fallback td {{ color: #c00; }}
tr.unreliable td {{ color: #a0a; font-style: italic; }}
img {{ max-width: 100%; }} .dim {{ color: #777; font-size: 90%; }}
</style></head><body>
<h1>vitalcam measurement</h1>
<p class="dim">Session {html.escape(result.session_id)} · {created} · vitalcam {__version__} ·
{outcome.measurement.n_frames} frames over {outcome.measurement.duration_s:.1f} s ({outcome.measurement.fps:.1f} fps)</p>
{banner}
<section><h2>Numbers</h2>
<table><tr><th>Vital</th><th>Value</th><th>Unit</th><th>Confidence</th><th>Kind</th></tr>{rows}</table>
<p>{html.escape(privacy_summary(outcome))}</p>
<p class="dim">SpO2 and blood pressure are population priors: an RGB camera cannot measure them without a
per-camera calibration. Not a medical device.</p></section>
{"".join(sections)}
</body></html>
"""


def write_report(outcome: Outcome, path: Path) -> Path:
    """Write atomically, so a cancelled or failed run never leaves half a report behind.

    The directory must exist: a mistyped path is an error, not a new directory tree.
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write the report {path}: the directory {path.parent} does not exist")
    text = render_report(outcome)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
