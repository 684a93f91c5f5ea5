"""Readings grouped into the tables an evaluation prints, writes as CSV and draws in its report."""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from contract.limits import RELIABLE_CONFIDENCE
from evaluation.metrics import Summary, summarize
from evaluation.runner import VITALCAM, Reading

CSV_COLUMNS: Final = (
    "recording", "window_s", "start_s", "end_s", "method", "hr_bpm", "reference_bpm", "error_bpm",
    "confidence", "snr_db", "note",
)  # fmt: skip
FEATURE_PREFIX: Final = "evidence_"


def window_label(window_s: float | None) -> str:
    return "whole" if window_s is None else f"{window_s:g} s"


def methods_of(readings: Iterable[Reading]) -> list[str]:
    """vitalcam first, then the baselines in the order they appear."""
    seen: list[str] = []
    for r in readings:
        if r.method not in seen:
            seen.append(r.method)
    return sorted(seen, key=lambda m: (m != VITALCAM, seen.index(m)))


def windows_of(readings: Iterable[Reading]) -> list[float | None]:
    seen: list[float | None] = []
    for r in readings:
        if r.window_s not in seen:
            seen.append(r.window_s)
    return seen


def summary(readings: Sequence[Reading], method: str, window_s: float | None) -> Summary:
    chosen = [r for r in readings if r.method == method and r.window_s == window_s]
    return summarize(
        [r.hr_bpm for r in chosen], [r.reference_bpm for r in chosen], [r.snr_db for r in chosen]
    )


@dataclass(frozen=True, slots=True)
class ConfidenceSplit:
    """vitalcam's readings at one window length split at RELIABLE_CONFIDENCE."""

    share_reliable: float  # of all readings
    reliable: Summary
    unreliable: Summary


def confidence_split(readings: Sequence[Reading], window_s: float | None) -> ConfidenceSplit:
    chosen = [
        r
        for r in readings
        if r.method == VITALCAM and r.window_s == window_s and math.isfinite(r.reference_bpm)
    ]
    produced = [r for r in chosen if math.isfinite(r.hr_bpm)]

    def part(keep: bool) -> Summary:
        rows = [
            r for r in chosen if (math.isfinite(r.confidence) and r.confidence >= RELIABLE_CONFIDENCE) == keep
        ]
        return summarize([r.hr_bpm for r in rows], [r.reference_bpm for r in rows], [r.snr_db for r in rows])

    share = (
        sum(r.confidence >= RELIABLE_CONFIDENCE for r in produced) / len(chosen) if chosen else float("nan")
    )
    return ConfidenceSplit(share_reliable=share, reliable=part(True), unreliable=part(False))


def reliability_bins(readings: Sequence[Reading], n_bins: int = 5) -> list[tuple[float, float, int, float]]:
    """(low, high, readings, share within 5 bpm) per confidence bin, over every vitalcam reading."""
    rows = [
        r for r in readings
        if r.method == VITALCAM and math.isfinite(r.hr_bpm) and math.isfinite(r.reference_bpm)
    ]  # fmt: skip
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for low, high in itertools.pairwise(edges):
        inside = [r for r in rows if low <= r.confidence < high or (high == 1.0 and r.confidence == 1.0)]
        share = float(np.mean([abs(r.error_bpm) <= 5.0 for r in inside])) if inside else float("nan")
        out.append((float(low), float(high), len(inside), share))
    return out


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def summary_lines(readings: Sequence[Reading]) -> list[str]:
    """A Markdown table per window length: every method's metrics, vitalcam's split by confidence."""
    lines: list[str] = []
    for window_s in windows_of(readings):
        lines.append(f"### window: {window_label(window_s)}")
        lines.append("| method | readings | MAE | RMSE | MAPE % | r | SNR dB | within 3 | within 5 |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for method in methods_of(readings):
            s = summary(readings, method, window_s)
            lines.append(
                f"| {method} | {s.n_readings}/{s.n} | {_fmt(s.mae)} | {_fmt(s.rmse)} | {_fmt(s.mape_pct, 1)} | "
                f"{_fmt(s.pearson_r)} | {_fmt(s.snr_db, 1)} | {_fmt(s.within_3)} | {_fmt(s.within_5)} |"
            )
        split = confidence_split(readings, window_s)
        lines.append(
            f"vitalcam confidence >= {RELIABLE_CONFIDENCE:g}: {_fmt(split.share_reliable)} of readings, "
            f"MAE {_fmt(split.reliable.mae)}, within 5 bpm {_fmt(split.reliable.within_5)} "
            f"(n={split.reliable.n_readings}); below: MAE {_fmt(split.unreliable.mae)}, "
            f"within 5 bpm {_fmt(split.unreliable.within_5)} (n={split.unreliable.n_readings})"
        )
        blind = [
            r for r in readings
            if r.method == VITALCAM and r.window_s == window_s and not math.isfinite(r.reference_bpm)
            and math.isfinite(r.hr_bpm)
        ]  # fmt: skip
        if blind:
            low = sum(r.confidence <= 0.2 for r in blind)
            lines.append(
                f"vitalcam on {len(blind)} spans without a reference (no pulse): confidence <= 0.2 on {low}, "
                f"highest {max(r.confidence for r in blind):.2f}"
            )
        lines.append("")
    return lines


def write_csv(readings: Sequence[Reading], path: Path) -> None:
    """One row per reading; vitalcam's confidence evidence as extra `evidence_*` columns."""
    feature_names = sorted({k for r in readings for k in r.features})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *(FEATURE_PREFIX + k for k in feature_names)])
        for r in readings:
            row: list[object] = [
                r.recording, "whole" if r.window_s is None else r.window_s, round(r.start_s, 3),
                round(r.end_s, 3), r.method, _fmt(r.hr_bpm, 2), _fmt(r.reference_bpm, 2),
                _fmt(r.error_bpm, 2), _fmt(r.confidence, 3), _fmt(r.snr_db, 2), r.note,
            ]  # fmt: skip
            row.extend(_fmt(r.features[k], 4) if k in r.features else "" for k in feature_names)
            writer.writerow(row)
