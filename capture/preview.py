"""An optional OpenCV preview window that draws what the other stages hand in (face box, regions, hints).

The window is a convenience, never a requirement: on a headless machine (CI, servers, SSH) it turns itself
off and every call becomes a no-op, so the same measurement code runs everywhere.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import cv2
import numpy as np

QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc cancels the measurement
CANCEL_TEXT = "press q to cancel"

BOX_BGR = (80, 220, 80)
POLYGON_BGR = (255, 200, 0)
TEXT_BGR = (255, 255, 255)
HINT_BGR = (60, 200, 255)
PULSE_BGR = (60, 60, 255)
PROGRESS_BGR = (80, 220, 80)


@dataclass(slots=True)
class Overlay:
    """What to draw over a frame; every field is optional so each stage fills in what it knows.

    `face_box_px` is x, y, w, h in pixels; `polygons` are N x 2 pixel point arrays (ROI outlines);
    `hints` are short quality messages ("move closer"); `progress` is 0..1 of the measurement;
    `pulse` is the recent pulse trace (any scale, drawn normalised); `phase` names the current step;
    `pulse_bpm` is the live (preview-quality) pulse rate and `remaining_s` the seconds left to capture.
    """

    face_box_px: tuple[int, int, int, int] | None = None
    polygons: list[np.ndarray] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    progress: float | None = None
    pulse: np.ndarray | None = None
    phase: str = ""
    pulse_bpm: float | None = None
    remaining_s: float | None = None


def status_line(overlay: Overlay) -> str:
    """The top line: the step and, while capturing, how long the person must keep still."""
    parts = [overlay.phase] if overlay.phase else []
    if overlay.remaining_s is not None:
        parts.append(f"{max(0.0, overlay.remaining_s):.0f} s left")
    return "  ".join(parts)


def pulse_label(overlay: Overlay) -> str:
    """What the pulse strip is labelled with: the live rate, marked as a preview like the terminal does."""
    return "" if overlay.pulse_bpm is None else f"pulse ~{overlay.pulse_bpm:.0f} bpm (preview)"


def _text(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Text with a dark outline so it stays readable on any background."""
    scale = max(0.4, image.shape[0] / 900)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_overlay(image: np.ndarray, overlay: Overlay | None) -> np.ndarray:
    """Return a copy of `image` (BGR uint8) with the overlay drawn; the input frame is never modified,
    because the same frame is also going to preprocessing."""
    canvas = image.copy()
    if overlay is None:
        return canvas
    height, width = canvas.shape[:2]
    line_px = max(1, round(min(width, height) / 300))
    if overlay.face_box_px is not None:
        x, y, w, h = (int(v) for v in overlay.face_box_px)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), BOX_BGR, line_px + 1)
    if overlay.polygons:
        points = [np.asarray(p, dtype=np.int32).reshape(-1, 1, 2) for p in overlay.polygons if len(p) >= 2]
        cv2.polylines(canvas, points, isClosed=True, color=POLYGON_BGR, thickness=line_px)
    row_px = max(14, round(height / 28))
    y_text = row_px
    status = status_line(overlay)
    if status:
        _text(canvas, status, (8, y_text), TEXT_BGR)
        y_text += row_px
    for hint in overlay.hints:
        _text(canvas, hint, (8, y_text), HINT_BGR)
        y_text += row_px
    if overlay.progress is not None:
        done = float(np.clip(overlay.progress, 0.0, 1.0))
        bar_h = max(4, height // 60)
        cv2.rectangle(canvas, (0, height - bar_h), (width - 1, height - 1), (40, 40, 40), -1)
        if done > 0:
            cv2.rectangle(
                canvas, (0, height - bar_h), (round((width - 1) * done), height - 1), PROGRESS_BGR, -1
            )
    bar_h = max(4, height // 60)
    if overlay.phase:  # a measurement is running: say how to stop it
        _text(canvas, CANCEL_TEXT, (8, height - bar_h - 8), TEXT_BGR)
    if overlay.pulse is not None:
        _draw_pulse(canvas, np.asarray(overlay.pulse, dtype=np.float64), line_px)
    label = pulse_label(overlay)
    if label:
        strip_top = height - height // 8 - bar_h - 8
        _text(canvas, label, (width - width // 3 - 8, strip_top - 6), PULSE_BGR)
    return canvas


def _draw_pulse(canvas: np.ndarray, pulse: np.ndarray, line_px: int) -> None:
    """The pulse trace in a strip along the bottom right, min-max normalised (its scale is arbitrary)."""
    values = pulse[np.isfinite(pulse)]
    if values.size < 2:
        return
    height, width = canvas.shape[:2]
    strip_w, strip_h = width // 3, height // 8
    x0, y0 = width - strip_w - 8, height - strip_h - max(4, height // 60) - 8
    span = float(values.max() - values.min()) or 1.0
    ys = y0 + strip_h - (values - values.min()) / span * strip_h
    xs = x0 + np.linspace(0, strip_w, values.size)
    points = np.stack([xs, ys], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [points], isClosed=False, color=PULSE_BGR, thickness=line_px, lineType=cv2.LINE_AA)


def display_available() -> bool:
    """Whether a window can be shown: a display server on Linux, and an OpenCV build with a GUI backend."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if line.strip().startswith("GUI:")), "")
    return "NONE" not in gui_line.upper()


class Preview:
    """A preview window; when `enabled` is False (no display) every method is a no-op that never fails."""

    def __init__(self, title: str = "vitalcam", *, enabled: bool | None = None) -> None:
        self.title = title
        self.enabled = display_available() if enabled is None else enabled
        self._sized = False
        if self.enabled:
            try:
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            except cv2.error:
                self.enabled = False

    def show(self, frame: np.ndarray, overlay: Overlay | None = None) -> bool:
        """Draw and show one frame; False when the user pressed q or Esc (or closed the window)."""
        if not self.enabled:
            return True
        try:
            if not self._sized:  # a resizable window opens small; start it at the frame's own size
                cv2.resizeWindow(self.title, frame.shape[1], frame.shape[0])
                self._sized = True
            cv2.imshow(self.title, draw_overlay(frame, overlay))
            key = cv2.waitKey(1) & 0xFF
            if key in QUIT_KEYS:
                return False
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            self.enabled = False  # the display went away mid-run: keep measuring without a window
            return True

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
        self.enabled = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_preview(title: str = "vitalcam", *, enabled: bool | None = None) -> Preview:
    """Open a preview window if a display is available (or `enabled` forces it on/off)."""
    return Preview(title, enabled=enabled)
