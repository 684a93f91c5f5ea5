"""Render the README's pictures: the live preview (offscreen, no display needed) and an HTML report.

    python -m docs.screenshots [OUT_DIR]        # writes preview.png, and report.png when chromium is installed

The preview is the real `capture.preview.draw_overlay` on a frame of the rendered demo face, with what
the preprocessor reported for that frame (face box, regions, pulse, live bpm) and the countdown the
measurement would show; the report is a real measurement of the same video. `report.png` is a headless
Chromium screenshot of the report when a `chromium` binary is installed (apt-get install chromium).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from capture import open_source
from capture.preview import Overlay, draw_overlay
from capture.synthetic import render_face_video
from preprocess import PreprocessConfig, Preprocessor
from vitalcam.report import write_report
from vitalcam.session import MeasureOptions, measure

DOCS = Path(__file__).resolve().parent
MEASURE_S = 30.0
PREVIEW_AT_S = 18.0  # late enough for the live pulse estimate to have settled


def render_preview(video: Path, out: Path) -> Path:
    """The preview window's picture at PREVIEW_AT_S of a 30 s capture, drawn offscreen."""
    pre = Preprocessor(PreprocessConfig(include_patches=False, source="camera"))
    try:
        with open_source(video) as frames:
            for frame in frames:
                features = pre.push(frame)
                if frame.t_s >= PREVIEW_AT_S:
                    break
    finally:
        pre.close()
    overlay = Overlay(
        face_box_px=features.face_box_px,
        polygons=list(features.polygons),
        hints=[w.message for w in features.warnings],
        progress=frame.t_s / MEASURE_S,
        pulse=features.pulse_preview,
        phase="CAPTURING",
        pulse_bpm=features.pulse_bpm_preview,
        remaining_s=MEASURE_S - frame.t_s,
    )
    cv2.imwrite(str(out), draw_overlay(frame.image, overlay))
    return out


def render_report(video: Path, out_html: Path) -> Path:
    outcome = measure(MeasureOptions(source=video, replay=True, duration_s=None, preview=False))
    return write_report(outcome, out_html)


def screenshot(html: Path, out_png: Path) -> Path | None:
    """A full-page screenshot of the report in headless Chromium, or None without a chromium binary."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={out_png}",
            "--window-size=1000,2300",  # the whole page, down to the quality timeline
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out_png


def main(out_dir: Path = DOCS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "face.mp4"
        render_face_video(video, duration_s=MEASURE_S, hr_bpm=74.0, rr_bpm=14.0, sdnn_ms=45.0, seed=7)
        print(render_preview(video, out_dir / "preview.png"))
        html = render_report(video, Path(tmp) / "report.html")
        print(screenshot(html, out_dir / "report.png") or "no chromium: report.png not refreshed")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS)
