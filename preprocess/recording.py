"""Trace recording: the per-frame rows of the measurement tensor, kept until `finish` stacks them.

The verdict on whether a recording is usable also lives here, because it is read off the same rows: the
share of frames with a face, and the seconds of frames with skin pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from contract.tensor import Measurement, Source, TensorMetadata, validate
from preprocess import extract, quality
from preprocess.quality import QualityTooLow


class TraceRecorder:
    """Timestamps, per-region means and skin counts, face boxes and patches, one row per frame."""

    def __init__(self, region_names: tuple[str, ...], include_patches: bool) -> None:
        self.region_names = region_names
        self.include_patches = include_patches
        self.t_s: list[float] = []
        # The kernel's integer sums and counts, divided into means once at the end (or for the preview's
        # window): per frame that small division cost as much as the landmark cadence saved.
        self._sums: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._box: list[np.ndarray] = []
        self._patches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.t_s)

    def last_t_s(self) -> float | None:
        return self.t_s[-1] if self.t_s else None

    def record(
        self,
        t_s: float,
        sums: np.ndarray,
        counts: np.ndarray,
        box_norm: np.ndarray,
        patch: np.ndarray | None,
    ) -> None:
        """One frame: the kernel's integer sums and counts [R], the normalised box [4], the patch."""
        self.t_s.append(t_s)
        self._sums.append(sums)
        self._counts.append(counts)
        self._box.append(box_norm)
        if patch is not None:
            self._patches.append(patch)

    def recent(self, region: int, window_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(t_s [N], mean RGB float64 [N, 3]) of one region over the last `window_s` seconds."""
        if not self.t_s:
            return np.empty(0), np.empty((0, 3))
        t_end = self.t_s[-1]
        start = len(self.t_s)
        while start > 0 and t_end - self.t_s[start - 1] <= window_s:
            start -= 1
        t_s = np.asarray(self.t_s[start:])
        sums = np.stack([row[region] for row in self._sums[start:]])
        counts = np.array([row[region] for row in self._counts[start:]])
        return t_s, extract.means_from_sums(sums, counts).astype(np.float64)

    def finish(
        self,
        *,
        face_mode: bool,
        min_face_share: float,
        min_usable_s: float,
        frame_size: tuple[int, int],
        source: Source,
        sdk: str,
        extra_metadata: Mapping[str, str],
    ) -> Measurement:
        """The measurement tensor, or QualityTooLow when there is not enough usable data in it."""
        n = len(self.t_s)
        if n < 2:
            raise QualityTooLow(quality.NO_FRAMES, f"Only {n} frame(s) were captured; nothing to measure.")
        skin_px = np.stack(self._counts)
        t_s = np.asarray(self.t_s, np.float64)
        if face_mode:
            face_present = ~np.isnan(np.stack(self._box)[:, 0])
            share = float(face_present.mean())
            if share < min_face_share:
                raise QualityTooLow(
                    quality.NO_FACE,
                    f"A face was found in only {share:.0%} of the frames "
                    f"(at least {min_face_share:.0%} needed): face the camera and retry.",
                )
        usable = skin_px.max(axis=1) > 0
        intervals = np.diff(t_s)
        usable_s = float(intervals[usable[1:] & usable[:-1]].sum())
        if usable_s < min_usable_s:
            raise QualityTooLow(
                quality.TOO_SHORT,
                f"Only {usable_s:.1f} s of usable video (at least {min_usable_s:g} s needed): "
                "hold still in good light for longer.",
            )
        width, height = frame_size
        measurement = Measurement(
            t_s=t_s,
            rgb=extract.means_from_sums(np.stack(self._sums), skin_px),
            skin_px=skin_px.astype(np.int32, copy=False),
            face_box=np.stack(self._box).astype(np.float32, copy=False),
            patches=np.stack(self._patches) if self.include_patches else None,
            meta=TensorMetadata(
                regions=self.region_names,
                frame_width=width,
                frame_height=height,
                source=source,
                sdk=sdk,
            ),
            extra_metadata=dict(extra_metadata),
        )
        validate(measurement)
        return measurement
