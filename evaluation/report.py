"""The evaluation report: one self-contained HTML file (figures embedded as PNG), no network.

Per-video table, estimate-vs-reference scatter, Bland-Altman plot and the reliability diagram (share of
readings within 5 bpm per confidence bin), with every method beside vitalcam.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.runner import VITALCAM, Reading, RecordingResult
from evaluation.tables import methods_of, reliability_bins, summary_lines, window_label, windows_of

COLOURS = {VITALCAM: "crimson", "textbook-pos": "navy", "textbook-chrom": "teal", "textbook-green": "olive"}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(readings: Sequence[Reading]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    images: dict[str, str] = {}
    windows = windows_of(readings)
    methods = [m for m in methods_of(readings) if m in (VITALCAM, "textbook-pos")]

    def done(title: str, fig: Any) -> None:
        images[title] = _png(fig)
        plt.close(fig)

    fig, axes = plt.subplots(1, len(windows), figsize=(4.2 * len(windows), 4.0), squeeze=False)
    for ax, window_s in zip(axes[0], windows, strict=True):
        lo, hi = 40.0, 160.0
        for method in methods:
            rows = [
                r
                for r in readings
                if r.method == method and r.window_s == window_s and math.isfinite(r.hr_bpm)
            ]
            x = np.array([r.reference_bpm for r in rows])
            y = np.array([r.hr_bpm for r in rows])
            if x.size:
                lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
            ax.scatter(x, y, s=14, alpha=0.7, color=COLOURS.get(method, "grey"), label=method)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="identity")
        ax.set_xlabel("reference heart rate (bpm)")
        ax.set_ylabel("estimated heart rate (bpm)")
        ax.set_title(f"window: {window_label(window_s)}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    done("Estimate against reference", fig)

    fig, axes = plt.subplots(1, len(windows), figsize=(4.2 * len(windows), 4.0), squeeze=False)
    for ax, window_s in zip(axes[0], windows, strict=True):
        for method in methods:
            rows = [
                r
                for r in readings
                if r.method == method and r.window_s == window_s and math.isfinite(r.hr_bpm)
            ]
            mean = np.array([(r.hr_bpm + r.reference_bpm) / 2 for r in rows])
            diff = np.array([r.error_bpm for r in rows])
            colour = COLOURS.get(method, "grey")
            ax.scatter(mean, diff, s=14, alpha=0.7, color=colour, label=method)
            if diff.size >= 2:
                bias, sd = float(diff.mean()), float(diff.std(ddof=1))
                ax.axhline(bias, color=colour, lw=1.0)
                for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
                    ax.axhline(limit, color=colour, lw=0.8, ls=":")
        ax.set_xlabel("mean of estimate and reference (bpm)")
        ax.set_ylabel("estimate - reference (bpm)")
        ax.set_title(f"Bland-Altman, {window_label(window_s)}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    done("Bland-Altman (bias and 95 % limits of agreement)", fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    bins = reliability_bins(readings)
    centres = [(lo + hi) / 2 for lo, hi, _, _ in bins]
    shares = [share for *_, share in bins]
    ax1.bar(centres, [0 if math.isnan(s) else s for s in shares], width=0.18, color="crimson", alpha=0.7)
    for c, (_, _, n, share) in zip(centres, bins, strict=True):
        ax1.annotate(f"n={n}", (c, 0 if math.isnan(share) else share), ha="center", va="bottom", fontsize=8)
    ax1.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1.1)
    ax1.set_xlabel("vitalcam heart-rate confidence")
    ax1.set_ylabel("share of readings within 5 bpm")
    ax1.set_title("Reliability diagram")
    ax1.grid(alpha=0.3)
    rows = [
        r
        for r in readings
        if r.method == VITALCAM and math.isfinite(r.hr_bpm) and math.isfinite(r.reference_bpm)
    ]
    ax2.scatter(
        [r.confidence for r in rows], [abs(r.error_bpm) for r in rows], s=12, alpha=0.6, color="crimson"
    )
    ax2.axhline(5.0, color="grey", ls="--", lw=0.8)
    ax2.set_yscale("symlog", linthresh=5.0)
    ax2.set_xlabel("vitalcam heart-rate confidence")
    ax2.set_ylabel("absolute error (bpm)")
    ax2.set_title("Error against confidence")
    ax2.grid(alpha=0.3)
    done("Reliability diagram and error against confidence", fig)
    return images


def _markdown_tables_to_html(lines: Sequence[str]) -> str:
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def render(results: Sequence[RecordingResult], *, title: str, citation: str = "") -> str:
    readings = [r for result in results for r in result.readings]
    images = _figures(readings) if readings else {}
    per_video = ["<table><tr><th>recording</th><th>duration (s)</th><th>reference (bpm)</th>"]
    methods = methods_of(readings)
    per_video.append("".join(f"<th>{html.escape(m)} (bpm, error)</th>" for m in methods))
    per_video.append("<th>vitalcam confidence</th><th>note</th></tr>")
    for result in results:
        whole = {r.method: r for r in result.readings if r.window_s is None}
        ref = next((r.reference_bpm for r in whole.values()), float("nan"))
        cells = [html.escape(result.name), f"{result.duration_s:.1f}", f"{ref:.1f}"]
        for method in methods:
            r = whole.get(method)
            cells.append(
                "-" if r is None or not math.isfinite(r.hr_bpm) else f"{r.hr_bpm:.1f} ({r.error_bpm:+.1f})"
            )
        v = whole.get(VITALCAM)
        cells.append("-" if v is None or not math.isfinite(v.confidence) else f"{v.confidence:.2f}")
        cells.append(html.escape(result.failure or (v.note if v is not None else "")))
        per_video.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    per_video.append("</table>")
    figures = "".join(
        f'<section><h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" src="data:image/png;base64,{png}"></section>'
        for t, png in images.items()
    )
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
img {{ max-width: 100%; }} .dim {{ color: #777; font-size: 90%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="dim">{created} · {len(results)} recordings · {len(readings)} readings</p>
<p class="dim">{html.escape(citation)}</p>
<h2>Summary</h2>
{_markdown_tables_to_html(summary_lines(readings))}
<h2>Per recording (whole video)</h2>
{"".join(per_video)}
{figures}
</body></html>
"""


def write(results: Sequence[RecordingResult], path: Path, *, title: str, citation: str = "") -> Path:
    """Write atomically (a failed run leaves no half report); the directory must exist."""
    text = render(results, title=title, citation=citation)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".eval-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
