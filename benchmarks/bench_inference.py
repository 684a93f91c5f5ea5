"""Inference benchmark: time per measurement, and accuracy on simulated traces and replayed videos.

    python -m benchmarks.bench_inference                 # timing + trace accuracy + video accuracy
    python -m benchmarks.bench_inference --no-videos     # skip rendering/replaying videos (fast)

Timing runs `infer` on one thread (the server's budget is one core) for 30 s and 120 s measurements.
The trace table uses tests/simulate_traces.py; the video table renders H.264 videos with
capture.synthetic.render_face_video and replays them through preprocess.process (mediapipe), so it
scores the whole on-device + server chain against the injected truth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from server.inference import InferenceFailed, infer  # noqa: E402
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
    ("72 bpm, RR 15, default", {"hr_bpm": 72.0, "rr_bpm": 15.0}),
    ("58 bpm, RR 10", {"hr_bpm": 58.0, "rr_bpm": 10.0, "sdnn_ms": 50.0}),
    ("96 bpm, RR 20", {"hr_bpm": 96.0, "rr_bpm": 20.0, "sdnn_ms": 30.0}),
    ("72 bpm, sensor noise 3", {"hr_bpm": 72.0, "noise_std": 3.0}),
    ("72 bpm, pulse 0.25 %", {"hr_bpm": 72.0, "pulse_amplitude": 0.0025}),
    ("no pulse", {"hr_bpm": 72.0, "pulse_amplitude": 0.0}),
)


def video_table(duration_s: float) -> list[str]:
    """Render each video, replay it through preprocess.process, infer, and score against the truth."""
    from capture.synthetic import render_face_video
    from capture.video import VideoFileSource
    from preprocess import PreprocessConfig, process

    lines = [
        "| video | true HR | HR | conf | true RR | RR | RR conf | true SDNN | SDNN | HRV conf | infer ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kwargs) in enumerate(VIDEO_CASES):
            path = Path(tmp) / f"bench_{i}.mp4"
            truth = render_face_video(path, duration_s=duration_s, seed=i, **kwargs)  # type: ignore[arg-type]
            with VideoFileSource(str(path)) as source:
                m = process(source, PreprocessConfig(source="video", include_patches=False))
            t0 = time.perf_counter()
            try:
                r = infer(m)
            except InferenceFailed as exc:
                lines.append(f"| {name} | {truth.hr_bpm:.1f} | failed: {exc.reason} |")
                continue
            ms = (time.perf_counter() - t0) * 1000.0
            v, c = r.vitals, r.quality["confidence"]
            lines.append(
                f"| {name} | {truth.hr_bpm:.1f} | {v['heart_rate']:.1f} | {c['heart_rate']:.2f} | "
                f"{truth.rr_bpm:.0f} | {v['respiratory_rate']:.1f} | {c['respiratory_rate']:.2f} | "
                f"{truth.sdnn_ms:.1f} | {v['hrv']:.1f} | {c['hrv']:.2f} | {ms:.0f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per duration")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per trace case")
    parser.add_argument("--no-videos", action="store_true", help="skip the rendered-video accuracy table")
    parser.add_argument("--video-seconds", type=float, default=30.0)
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
        print("\n".join(video_table(args.video_seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
