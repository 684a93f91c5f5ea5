"""Smoothing the face position that places the region masks: a One Euro filter (Casiez et al. 2012).

FaceMesh landmarks jitter by a few hundredths to tenths of a pixel from frame to frame even on a still
face. The region masks follow the landmarks' translation with sub-pixel precision, so that jitter moves
the masks over the skin's texture and shading, and the region means pick it up as broadband noise, much
of it in the pulse band (0.7-3 Hz). On a 0.5 % pulse a tenth of a pixel matters, mostly for the small
regions (forehead, cheeks), whose boundaries are a large share of their pixels.

A One Euro filter is a first-order low-pass whose cut-off rises with the filtered speed: at rest it
smooths hard (jitter gone), while a head that really moves raises the cut-off and is followed without
lag. It also works on irregular time steps, which is what it gets when landmarks run every k-th frame.

Between landmark runs the face is carried by optical flow, so the position the flow predicts is a better
starting point than the last filtered position. `update` therefore takes an optional `predicted`
position: the filter then smooths only the landmarks' *correction* to the prediction. Without a
prediction (landmarks on every frame) it is the plain One Euro filter; with one it is the same filter in
the tracked face's frame of reference, so every cadence gets the same smoothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def smoothing_factor(dt_s: float, cutoff_hz: float) -> float:
    """Weight of a new sample in a first-order low-pass with this cut-off, for a step of dt_s."""
    tau_s = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau_s / dt_s)


@dataclass(slots=True)
class OneEuroFilter2D:
    """One Euro filter on a 2-D position, one cut-off for both axes (from the speed's magnitude).

    Positions and speeds are in whatever unit the caller uses; the pipeline passes face widths, so
    `beta_hz_per_unit_speed` (cut-off added per face width per second) is independent of the face's
    size in the frame.
    """

    min_cutoff_hz: float
    beta_hz_per_unit_speed: float
    speed_cutoff_hz: float = 1.0
    _x: float = math.nan
    _y: float = math.nan
    _vx: float = 0.0
    _vy: float = 0.0
    _t_s: float = math.nan

    def reset(self, x: float, y: float, t_s: float) -> tuple[float, float]:
        """Start again from a measurement taken as exact (first detection, a lost track, a jump)."""
        self._x, self._y, self._vx, self._vy, self._t_s = x, y, 0.0, 0.0, t_s
        return x, y

    @property
    def started(self) -> bool:
        return not math.isnan(self._t_s)

    def update(
        self, x: float, y: float, t_s: float, predicted: tuple[float, float] | None = None
    ) -> tuple[float, float]:
        """The filtered position for a measurement (x, y) at t_s.

        `predicted` is where the filtered position has moved since the last update by other means
        (optical flow); None means it stayed where it was.
        """
        dt_s = t_s - self._t_s
        if not self.started or not dt_s > 0.0:
            return self.reset(x, y, t_s)
        px, py = predicted if predicted is not None else (self._x, self._y)
        alpha_speed = smoothing_factor(dt_s, self.speed_cutoff_hz)
        self._vx += alpha_speed * ((x - self._x) / dt_s - self._vx)
        self._vy += alpha_speed * ((y - self._y) / dt_s - self._vy)
        cutoff_hz = self.min_cutoff_hz + self.beta_hz_per_unit_speed * math.hypot(self._vx, self._vy)
        alpha = smoothing_factor(dt_s, cutoff_hz)
        self._x = px + alpha * (x - px)
        self._y = py + alpha * (y - py)
        self._t_s = t_s
        return self._x, self._y
