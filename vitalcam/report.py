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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from contract import __version__
from contract.limits import RELIABLE_CONFIDENCE
from vitalcam.console import privacy_summary, quality_warnings, vital_rows
from vitalcam.session import Outcome

SECTIONS = ("Pulse waveform", "Pulse spectrum", "Heart-rate track", "Breathing signal", "Quality timeline")


def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(outcome: Outcome) -> tuple[dict[str, str], str]:
    """Section title -> base64 PNG, and why the signal plots are missing when the engine could not analyse."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from server.inference import InferenceFailed, analyze

    failure = ""
    try:
        analysis = analyze(outcome.measurement)
    except InferenceFailed as exc:
        analysis = None
        failure = str(exc)
    images: dict[str, str] = {}

    def plot(title: str, draw: Any, height_in: float = 2.4) -> None:
        fig, ax = plt.subplots(figsize=(9, height_in))
        draw(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        images[title] = _figure_png(fig)
        plt.close(fig)

    if analysis is not None:

        def pulse(ax: Any) -> None:
            ax.plot(analysis.t_s, analysis.pulse, lw=0.8, color="crimson")
            beats = np.asarray(analysis.beat_t_s)
            if beats.size:
                ax.plot(
                    beats, np.interp(beats, analysis.t_s, analysis.pulse), "k.", ms=4, label="detected beats"
                )
                ax.legend(loc="upper right")
            ax.set_xlabel("time (s)")

        def spectrum(ax: Any) -> None:
            ax.plot(analysis.freq_bpm, analysis.power, color="navy")
            trusted = analysis.confidence["heart_rate"] >= RELIABLE_CONFIDENCE
            label = (
                f"HR {analysis.hr_bpm:.1f} bpm" if trusted else f"peak {analysis.hr_bpm:.1f} bpm (unreliable)"
            )
            ax.axvline(analysis.hr_bpm, color="crimson" if trusted else "purple", ls="--", label=label)
            ax.set_xlabel("frequency (beats/min)")
            ax.set_xlim(30, 220)
            ax.legend(loc="upper right")

        def track(ax: Any) -> None:
            ax.plot(analysis.track_t_s, analysis.track_bpm, "o-", ms=3)
            ax.axhline(analysis.hr_bpm, color="crimson", ls="--")
            ax.set_xlabel("window centre (s)")
            ax.set_ylabel("bpm")

        def breathing(ax: Any) -> None:
            ax.plot(analysis.t_s, analysis.breathing, color="teal")
            ax.set_xlabel("time (s)")

        plot("Pulse waveform", pulse)
        plot("Pulse spectrum", spectrum)
        plot("Heart-rate track", track)
        plot("Breathing signal", breathing)
    timeline = outcome.timeline

    def quality(ax: Any) -> None:
        ax.plot(timeline.t_s, timeline.brightness, label="brightness (0..255)", color="orange")
        ax.plot(timeline.t_s, 100 * timeline.face_present, label="face present (x100)", color="green")
        ax.plot(timeline.t_s, timeline.face_speed, label="face speed (face widths/s)", color="purple")
        ax.set_xlabel("time (s)")
        ax.legend(loc="upper right", fontsize=8)

    plot("Quality timeline", quality, height_in=2.8)
    return images, failure


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
    banner += "".join(f'<p class="note">Note: {html.escape(m)}</p>' for m in quality_warnings(result))
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
    """Write atomically, so a cancelled or failed run never leaves half a report behind."""
    text = render_report(outcome)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
