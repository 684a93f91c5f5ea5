"""Inference benchmark: time per measurement, and accuracy on simulated traces and replayed videos.

    python -m benchmarks.bench_inference                 # timing + trace accuracy + video accuracy
    python -m benchmarks.bench_inference --no-videos     # skip rendering/replaying videos (fast)

Timing runs `infer` on one thread (the server's budget is one core) for 30 s and 120 s measurements.
The trace table uses tests/simulate_traces.py. The video table renders each case of VIDEO_CASES with
capture.synthetic.render_face_video (lossless H.264 unless the case sets `crf`; seed = case index),
replays it through capture.open_source and preprocess.process (mediapipe), and scores infer against the
injected truth, so it measures the whole on-device + server chain. Errors are signed (estimate − truth);
on no-pulse videos the estimates are shown in parentheses. `--cache-dir` keeps the rendered tensors so a
re-run after an engine change skips rendering (about 30 s per video).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from capture.synthetic import SyntheticTruth  # noqa: E402
from contract.tensor import Measurement, from_bytes, to_bytes  # noqa: E402
from server.inference import InferenceFailed, InferenceResult, infer  # noqa: E402
from tests.simulate_traces import simulate  # noqa: E402


def time_inference(duration_s: float, repeats: int) -> tuple[float, float]:
    """Median and best wall time (ms) of `infer` on a simulated measurement of `duration_s`."""
    m, _ = simulate(duration_s=duration_s, seed=1)
    infer(m)  # warm-up: imports, filter design caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        infer(m)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), min(times)


TRACE_CASES: tuple[tuple[str, dict[str, object]], ...] = (
    ("rest 60 bpm, clean", {"hr_bpm": 60.0, "rr_bpm": 12.0, "sdnn_ms": 40.0, "noise_std": 0.05}),
    ("72 bpm, clean", {"hr_bpm": 72.0, "rr_bpm": 15.0, "sdnn_ms": 35.0, "noise_std": 0.05}),
    ("95 bpm, RR 22", {"hr_bpm": 95.0, "rr_bpm": 22.0, "sdnn_ms": 25.0, "noise_std": 0.05}),
    ("72 bpm, noise 0.2", {"hr_bpm": 72.0, "noise_std": 0.2}),
    ("72 bpm, noise 0.4", {"hr_bpm": 72.0, "noise_std": 0.4}),
    ("72 bpm, noise 0.8", {"hr_bpm": 72.0, "noise_std": 0.8}),
    ("jitter+drops", {"hr_bpm": 80.0, "noise_std": 0.05, "jitter_ms": 6.0, "drop_fraction": 0.15}),
    ("head bob 1.6 Hz", {"hr_bpm": 66.0, "noise_std": 0.05, "motion_hz": 1.6, "motion_amplitude": 0.02}),
    ("harmonic trap 48", {"hr_bpm": 48.0, "dicrotic": 0.8, "dicrotic_phase": 0.7, "noise_std": 0.05}),
    ("pure noise", {"with_pulse": False, "noise_std": 0.3}),
)


def trace_table(seeds: int) -> list[str]:
    """Mean absolute errors over `seeds` seeds per case, with the median confidences."""
    lines = [
        "| case | HR MAE bpm | HR conf | RR MAE /min | RR conf | SDNN MAE ms | HRV conf |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, kwargs in TRACE_CASES:
        hr_e, rr_e, sd_e, hr_c, rr_c, hv_c = [], [], [], [], [], []
        for seed in range(seeds):
            m, truth = simulate(seed=100 + seed, **kwargs)  # type: ignore[arg-type]
            r = infer(m)
            hr_e.append(abs(r.vitals["heart_rate"] - truth.hr_bpm))
            rr_e.append(abs(r.vitals["respiratory_rate"] - truth.rr_bpm))
            sd_e.append(abs(r.vitals["hrv"] - truth.sdnn_ms))
            hr_c.append(r.quality["confidence"]["heart_rate"])
            rr_c.append(r.quality["confidence"]["respiratory_rate"])
            hv_c.append(r.quality["confidence"]["hrv"])
        hr_note = " (no pulse)" if kwargs.get("with_pulse") is False else ""
        lines.append(
            f"| {name} | {statistics.mean(hr_e):.1f}{hr_note} | {statistics.median(hr_c):.2f} | "
            f"{statistics.mean(rr_e):.1f} | {statistics.median(rr_c):.2f} | {statistics.mean(sd_e):.1f} | "
            f"{statistics.median(hv_c):.2f} |"
        )
    return lines


VIDEO_CASES: tuple[tuple[str, dict[str, object]], ...] = (
    ("72 bpm, lossless (default)", {"hr_bpm": 72.0, "rr_bpm": 15.0}),
    ("58 bpm, RR 10, SDNN 50", {"hr_bpm": 58.0, "rr_bpm": 10.0, "sdnn_ms": 50.0}),
    ("96 bpm, RR 20, SDNN 30", {"hr_bpm": 96.0, "rr_bpm": 20.0, "sdnn_ms": 30.0}),
    ("72 bpm, sensor noise 3", {"hr_bpm": 72.0, "noise_std": 3.0}),
    ("72 bpm, sensor noise 6", {"hr_bpm": 72.0, "noise_std": 6.0}),
    ("72 bpm, pulse 0.25 %", {"hr_bpm": 72.0, "pulse_amplitude": 0.0025}),
    ("72 bpm, pulse 0.1 %", {"hr_bpm": 72.0, "pulse_amplitude": 0.001}),
    ("72 bpm, crf 3", {"hr_bpm": 72.0, "crf": 3}),
    ("72 bpm, crf 14", {"hr_bpm": 72.0, "crf": 14}),
    ("72 bpm, crf 23", {"hr_bpm": 72.0, "crf": 23}),
    ("96 bpm, crf 14", {"hr_bpm": 96.0, "rr_bpm": 20.0, "sdnn_ms": 30.0, "crf": 14}),
    ("no pulse, lossless", {"hr_bpm": 72.0, "pulse_amplitude": 0.0}),
    ("no pulse, crf 23", {"hr_bpm": 72.0, "pulse_amplitude": 0.0, "crf": 23}),
)


@dataclass(frozen=True, slots=True)
class VideoRun:
    """One replayed video scored against its truth (errors are absolute; NaN when inference failed)."""

    name: str
    truth: SyntheticTruth
    result: InferenceResult | None
    failure: str | None
    infer_ms: float


def video_measurement(
    name: str, kwargs: Mapping[str, object], duration_s: float, seed: int, workdir: Path, cache: bool
) -> tuple[Measurement, SyntheticTruth]:
    """Render the video and replay it through capture.open_source → preprocess.process.

    With `cache`, the rendered tensor and truth are kept in `workdir` keyed by the case, so re-running the
    benchmark after an engine change skips rendering and preprocessing (delete the directory whenever
    capture/ or preprocess/ change).
    """
    from capture import open_source
    from capture.synthetic import render_face_video
    from preprocess import PreprocessConfig, process

    key = hashlib.sha1(repr((sorted(kwargs.items()), duration_s, seed)).encode()).hexdigest()[:12]
    tensor_path = workdir / f"{key}.safetensors"
    truth_path = workdir / f"{key}.truth.json"
    if cache and tensor_path.exists() and truth_path.exists():
        return from_bytes(tensor_path.read_bytes()), SyntheticTruth.from_json(truth_path.read_text())
    video_path = workdir / f"{key}.mp4"
    truth = render_face_video(video_path, duration_s=duration_s, seed=seed, **kwargs)  # type: ignore[arg-type]
    with open_source(video_path) as source:
        m = process(source, PreprocessConfig(source="video", include_patches=False))
    if cache:
        tensor_path.write_bytes(to_bytes(m))
        truth_path.write_text(truth.to_json())
    video_path.unlink(missing_ok=True)
    Path(f"{video_path}.truth.json").unlink(missing_ok=True)
    return m, truth


def run_videos(duration_s: float, cache_dir: Path | None) -> list[VideoRun]:
    """Render, replay and infer every case in VIDEO_CASES (seed = case index, so runs are reproducible)."""
    runs: list[VideoRun] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = cache_dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for seed, (name, kwargs) in enumerate(VIDEO_CASES):
            m, truth = video_measurement(name, kwargs, duration_s, seed, workdir, cache_dir is not None)
            t0 = time.perf_counter()
            try:
                result, failure = infer(m), None
            except InferenceFailed as exc:
                result, failure = None, exc.reason
            runs.append(VideoRun(name, truth, result, failure, (time.perf_counter() - t0) * 1000.0))
            print(video_row(runs[-1]), file=sys.stderr, flush=True)
    return runs


def video_row(run: VideoRun) -> str:
    """Markdown row: signed errors against the truth and the per-vital confidences."""
    if run.result is None:
        return f"| {run.name} | failed: {run.failure} |"
    v, c, t = run.result.vitals, run.result.quality["confidence"], run.truth
    if t.pulse_amplitude == 0:
        hr = f"({v['heart_rate']:.1f})"
        sdnn = f"({v['hrv']:.0f})"
    else:
        hr = f"{v['heart_rate'] - t.hr_bpm:+.1f}"
        sdnn = f"{v['hrv'] - t.sdnn_ms:+.1f}"
    return (
        f"| {run.name} | {t.hr_bpm:.1f} | {hr} | {c['heart_rate']:.2f} | {run.result.quality['snr_db']:.1f} | "
        f"{t.sdnn_ms:.1f} | {sdnn} | {c['hrv']:.2f} | {t.rr_bpm:.0f} | "
        f"{v['respiratory_rate'] - t.rr_bpm:+.1f} | {c['respiratory_rate']:.2f} | {run.infer_ms:.0f} |"
    )


VIDEO_HEADER = (
    "| video | true HR | HR err | HR conf | SNR dB | true SDNN | SDNN err | HRV conf | true RR | RR err | "
    "RR conf | infer ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per duration")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per trace case")
    parser.add_argument("--no-videos", action="store_true", help="skip the rendered-video accuracy table")
    parser.add_argument("--video-seconds", type=float, default=30.0)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep rendered tensors here and reuse them (clear it when capture/ or preprocess/ change)",
    )
    args = parser.parse_args(argv)

    print("## Inference time (one thread)\n")
    print("| measurement | median ms | best ms |\n|---|---|---|")
    for duration_s in (30.0, 120.0):
        median_ms, best_ms = time_inference(duration_s, args.repeats)
        print(f"| {duration_s:.0f} s, 30 fps, 4 regions | {median_ms:.1f} | {best_ms:.1f} |")
    print(f"\n## Accuracy on simulated traces ({args.seeds} seeds per case, 30 s)\n")
    print("\n".join(trace_table(args.seeds)))
    if not args.no_videos:
        print(
            f"\n## Accuracy on replayed synthetic videos ({args.video_seconds:.0f} s, preprocess.process)\n"
        )
        print(VIDEO_HEADER)
        print("\n".join(video_row(run) for run in run_videos(args.video_seconds, args.cache_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
