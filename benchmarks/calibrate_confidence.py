"""Fit the heart-rate confidence on data: real videos, realistic lossy renders and simulated traces.

    python -m benchmarks.calibrate_confidence [--ubfc ../shared/data/ubfc-dev] [--cache-dir DIR]
        [--csv docs/confidence-calibration.csv] [--jobs 2]

Every reading (whole recordings and non-overlapping 30 s and 20 s windows) goes through the product's
engine, which reports its confidence evidence (`server.inference.confidence`); the reading is labelled
correct when it is within 5 bpm of the contact reference. Two logistic models of P(correct) are fitted by
L2-regularised maximum likelihood: one with the face halves' split-half coherence, one without (for
tensors that lack the halves). Real readings weigh 3x (they are the judge, and few), readings of videos
without a pulse 4x (a pulse-less video must not score). The printed coefficients go into
`server/inference/confidence.py`; the CSV (features and errors only, no video content) and the reliability
table go into docs/vitals.md.

Data: the UBFC-rPPG development subjects when `--ubfc` is given (research use only: they are read in
place, never copied); 32 renders of two faces at webcam, MJPG, phone and low bitrates (20 with a pulse
of 0.3-1 % at 45-150 bpm, 12 without), rendered once into the cache; 160 simulated traces (noise,
motion, 15-60 s), 80 whose pulse is buried in noise and 200 without a pulse.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from benchmarks.render_set import render_set
from evaluation import evaluate, load
from evaluation.runner import VITALCAM, Reading

FEATURES_SPLIT = ("margin", "split_half_held", "support", "sharpness_db", "roughness_bpm")
FEATURES_PLAIN = ("margin", "support", "sharpness_db", "roughness_bpm")
# Sample weights: the real readings are the judge and few; a confident reading of a pulse-less video is
# the worst failure (the brief: near zero on noise), so those weigh most.
REAL_WEIGHT = 3.0
PULSELESS_WEIGHT = 4.0
WINDOWS: tuple[float | None, ...] = (None, 30.0, 20.0)
TOLERANCE_BPM = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    source: str  # real | render | render-nopulse | sim | sim-nopulse
    name: str
    window_s: float | None
    features: dict[str, float]
    error_bpm: float  # NaN without a pulse
    confidence: float

    @property
    def correct(self) -> bool:
        return math.isfinite(self.error_bpm) and abs(self.error_bpm) <= TOLERANCE_BPM


def video_samples(root: Path, source: str, jobs: int) -> list[Sample]:
    results = evaluate(load(root, "ubfc-rppg"), WINDOWS, jobs=jobs)
    samples = []
    for result in results:
        pulseless = source == "render" and result.name.startswith("n")
        for r in result.readings:
            if r.method == VITALCAM and math.isfinite(r.hr_bpm):
                samples.append(_sample(r, "render-nopulse" if pulseless else source, pulseless))
    return samples


def _sample(r: Reading, source: str, pulseless: bool) -> Sample:
    error = float("nan") if pulseless else r.error_bpm
    return Sample(source, r.recording, r.window_s, dict(r.features), error, r.confidence)


def trace_samples() -> list[Sample]:
    """Simulated traces: 160 with a pulse (noise 0.05-4, some with head motion, 15-60 s), 80 whose pulse
    is buried (noise 5-10) and 200 without one, so that the tail of noise is well sampled."""
    from server.inference import InferenceFailed, analyze
    from tests.simulate_traces import simulate

    rng = np.random.default_rng(7)
    samples = []
    for i in range(440):
        kind = "pulse" if i < 160 else "buried" if i < 240 else "none"
        duration = float(rng.choice([15.0, 20.0, 30.0, 60.0]))
        hr = float(rng.uniform(45, 150))
        kwargs: dict[str, object] = {"hr_bpm": hr, "duration_s": duration, "seed": 1000 + i}
        if kind == "pulse":
            kwargs["noise_std"] = float(np.exp(rng.uniform(np.log(0.05), np.log(4.0))))
            if rng.random() < 0.3:
                kwargs.update(
                    motion_hz=float(rng.uniform(0.7, 3.0)), motion_amplitude=float(rng.uniform(0.005, 0.03))
                )
        elif kind == "buried":
            kwargs["noise_std"] = float(rng.uniform(5.0, 10.0))
        else:
            kwargs.update(with_pulse=False, noise_std=float(rng.uniform(0.1, 1.0)))
        m, truth = simulate(**kwargs)  # type: ignore[arg-type]
        try:
            a = analyze(m)
        except InferenceFailed:
            continue
        error = a.heart.hr_bpm - truth.hr_bpm if kind != "none" else float("nan")
        features = {k: float(v) for k, v in a.heart.factors.items()}
        source = "sim-nopulse" if kind == "none" else "sim"
        samples.append(Sample(source, f"sim{i}", duration, features, error, a.confidence["heart_rate"]))
    return samples


def fit(samples: Sequence[Sample], names: Sequence[str], l2: float = 0.1) -> dict[str, float]:
    """L2-regularised weighted logistic regression of `correct` on the features."""
    usable = [s for s in samples if all(k in s.features for k in names)]
    x = np.array([[s.features[k] for k in names] for s in usable])
    y = np.array([float(s.correct) for s in usable])
    weight = np.array(
        [
            REAL_WEIGHT if s.source == "real" else PULSELESS_WEIGHT if "nopulse" in s.source else 1.0
            for s in usable
        ]
    )

    def loss(b: np.ndarray) -> float:
        p = 1.0 / (1.0 + np.exp(-(b[0] + x @ b[1:])))
        nll = -np.sum(weight * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))
        return float(nll + l2 * np.sum(b[1:] ** 2))

    b = minimize(loss, np.zeros(len(names) + 1), method="BFGS").x
    return {"intercept": float(b[0]), **{k: float(v) for k, v in zip(names, b[1:], strict=True)}}


def predict(model: dict[str, float], features: dict[str, float]) -> float:
    z = model["intercept"] + sum(w * features[k] for k, w in model.items() if k != "intercept")
    return float(1.0 / (1.0 + np.exp(-z)))


def report(samples: Sequence[Sample], model: dict[str, float], title: str) -> list[str]:
    """Tables of the model's confidence (with the engine's noise floor taken off) on every source."""
    from server.inference.confidence import NOISE_FLOOR

    names = [k for k in model if k != "intercept"]
    usable = [s for s in samples if all(k in s.features for k in names)]
    raw = np.array([predict(model, s.features) for s in usable])
    pulseless = np.array(["nopulse" in s.source for s in usable])
    p = np.maximum(0.0, (raw - NOISE_FLOOR) / (1.0 - NOISE_FLOOR))
    correct = np.array([s.correct for s in usable])
    lines = [f"## {title}", "coefficients: " + ", ".join(f"{k} {v:+.3f}" for k, v in model.items())]
    lines.append(
        "pulse-less readings, probability before the floor: p50/p90/p95/p99 "
        + " / ".join(f"{q:.2f}" for q in np.percentile(raw[pulseless], [50, 90, 95, 99]))
        + f"; confidence <= 0.2 on {np.mean(p[pulseless] <= 0.2):.0%}, <= 0.1 on {np.mean(p[pulseless] <= 0.1):.0%}"
    )
    lines.append("")
    lines.append("| source | readings | correct | confidence >= 0.5 | correct among them | highest |")
    lines.append("|---|---|---|---|---|---|")
    for source in ("real", "render", "render-nopulse", "sim", "sim-nopulse"):
        sel = np.array([s.source == source for s in usable])
        if not sel.any():
            continue
        high = p[sel] >= 0.5
        lines.append(
            f"| {source} | {sel.sum()} | {correct[sel].mean():.2f} | {high.mean():.2f} | "
            f"{correct[sel][high].mean() if high.any() else float('nan'):.2f} | {p[sel].max():.2f} |"
        )
    lines += ["", "| confidence | readings | within 5 bpm |", "|---|---|---|"]
    for low in np.arange(0.0, 1.0, 0.2):
        sel = (p >= low) & (p < low + 0.2 + (1e-9 if low >= 0.8 else 0.0))
        if sel.any():
            lines.append(f"| {low:.1f}-{low + 0.2:.1f} | {sel.sum()} | {correct[sel].mean():.2f} |")
    return lines


def write_csv(samples: Sequence[Sample], path: Path) -> None:
    names = sorted({k for s in samples for k in s.features})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "name", "window_s", "error_bpm", "correct", "confidence", *names])
        for s in samples:
            writer.writerow(
                [s.source, s.name, "whole" if s.window_s is None else f"{s.window_s:g}",
                 "" if not math.isfinite(s.error_bpm) else f"{s.error_bpm:.2f}", int(s.correct),
                 f"{s.confidence:.3f}", *(f"{s.features[k]:.4f}" if k in s.features else "" for k in names)]
            )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ubfc", type=Path, help="UBFC-rPPG folder (real data); skipped when absent")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitalcam" / "calibration",
    )
    parser.add_argument("--csv", type=Path, help="write the samples (features, errors) as CSV")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    samples: list[Sample] = []
    if args.ubfc is not None and args.ubfc.is_dir():
        samples += video_samples(args.ubfc, "real", args.jobs)
    else:
        print("no real data given (--ubfc): fitting on renders and traces only", flush=True)
    samples += video_samples(render_set(args.cache_dir / "renders"), "render", args.jobs)
    samples += trace_samples()
    for title, names in (
        ("with split-half coherence", FEATURES_SPLIT),
        ("without (no face halves)", FEATURES_PLAIN),
    ):
        model = fit(samples, names)
        print("\n".join(report(samples, model, title)), flush=True)
        print()
    if args.csv is not None:
        write_csv(samples, args.csv)
        print(f"samples written to {args.csv}")


if __name__ == "__main__":
    main()
