"""Preprocess throughput: per-stage ms per frame and end-to-end replay fps at 480p, 720p and 1080p.

Run: `python -m benchmarks.bench_preprocess [--duration-s 8] [--resolutions 480p,720p,1080p]`.
The video is what a webcam stores (`capture.synthetic.render_bench_video`: the "webcam" preset, sensor
noise sigma 2, natural head motion, light drift, H.264 crf 23), first `--duration-s` seconds of it.
Two references are measured in the same run on the same video:
  (a) the decode-only ceiling, a bare `cv2.VideoCapture.read()` loop;
  (b) a straightforward implementation: decode, FaceMesh on every full-resolution frame (with the same
      detection confidence as ours, so it finds the face in 16:9 frames too and pays for the means),
      region masks rasterised every frame and numpy boolean-mask means on the full frame, a 72x72 resize.
"before" is our pipeline fed fully converted BGR frames (`VideoFileSource(yuv=False)`, the previous
design); "after" reads the decoder's I420 planes. Numbers are wall-clock on whatever else the machine
is doing; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


def render(cache_dir: Path, name: str, duration_s: float) -> Path:
    """The benchmark video at one size (webcam noise and bit rate: noise-free renders decode faster than
    anything a camera records and would flatter every ratio)."""
    from capture.synthetic import render_bench_video

    path = cache_dir / f"webcam_{name}_{duration_s:g}s.mp4"
    if not path.exists():
        render_bench_video(path, name, duration_s)
    return path


def cv2_decode_fps(path: Path) -> tuple[float, int]:
    """Reference (a): the bare OpenCV read loop (decode + BGR conversion, nothing else)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    start = time.perf_counter()
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    elapsed = time.perf_counter() - start
    cap.release()
    return n / elapsed, n


def frames(path: Path, yuv: bool = True) -> Iterator:
    """Replay through the capture package's video source (what `vitalcam measure --video` uses)."""
    from capture import VideoFileSource

    with VideoFileSource(path, yuv=yuv) as source:
        yield from source


def decode_ms(path: Path, yuv: bool = True) -> float:
    """Decode stage on its own: iterate the capture source, do nothing with the frames."""
    n = 0
    start = time.perf_counter()
    for _ in frames(path, yuv):
        n += 1
    return (time.perf_counter() - start) / n * 1000


def straightforward_fps(path: Path, max_frames: int) -> tuple[float, float]:
    """Reference (b): landmarks every frame at full resolution, boolean-mask means per region.

    Returns (fps, share of frames with a face): frames without a face skip the means, so a reference
    that misses the face would look faster than it is.
    """
    import mediapipe as mp

    from preprocess import regions
    from preprocess.extract import CB_MAX, CB_MIN, CLIP_LEVEL, CR_MAX, CR_MIN, DARK_LUMA
    from preprocess.face import quiet_native_logs

    with quiet_native_logs():  # mediapipe's C++ start-up log lines
        mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.3
        )
        mesh.process(np.zeros((64, 64, 3), np.uint8))
    cap = cv2.VideoCapture(str(path))
    n = found = 0
    start = time.perf_counter()
    while n < max_frames:
        ok, image = cap.read()
        if not ok:
            break
        n += 1
        height, width = image.shape[:2]
        result = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if not result.multi_face_landmarks:
            continue
        found += 1
        lm = result.multi_face_landmarks[0].landmark
        points = np.array([(p.x * width, p.y * height) for p in lm[:468]], np.float32)
        ycrcb = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
        skin = (
            (ycrcb[..., 0] >= DARK_LUMA)
            & (ycrcb[..., 1] >= CR_MIN)
            & (ycrcb[..., 1] <= CR_MAX)
            & (ycrcb[..., 2] >= CB_MIN)
            & (ycrcb[..., 2] <= CB_MAX)
            & (image.max(axis=2) < CLIP_LEVEL)
        )
        polys = regions.region_polygons(points)
        for poly in [*polys[:3], polys[3]]:
            mask = np.zeros((height, width), np.uint8)
            cv2.fillPoly(mask, [poly], (1,))
            sel = (mask == 1) & skin
            _ = image[sel].mean(axis=0)
        x, y, w, h = cv2.boundingRect(polys[3])
        _ = cv2.resize(image[max(0, y) : y + h, max(0, x) : x + w], (72, 72), interpolation=cv2.INTER_AREA)
    elapsed = time.perf_counter() - start
    cap.release()
    mesh.close()
    return n / elapsed, found / max(n, 1)


def ours(path: Path, yuv: bool = True, stages: bool = True) -> dict[str, float]:
    """End-to-end replay through `process` (background decode), plus per-stage and live push() costs."""
    from preprocess import PreprocessConfig, Preprocessor, process, to_bytes
    from preprocess.pipeline import STAGES

    # Warm the landmark model and numba once so start-up is not billed to throughput.
    Preprocessor().close()
    start = time.perf_counter()
    config = PreprocessConfig(source="video", min_usable_s=1.0, min_face_share=0.0)
    measurement = process(frames(path, yuv), config)
    elapsed = time.perf_counter() - start
    n = measurement.n_frames
    if not stages:
        return {"fps": n / elapsed}
    t0 = time.perf_counter()
    to_bytes(measurement)
    write_ms = (time.perf_counter() - t0) / n * 1000

    # Per stage and live cost: push() on pre-decoded frames, so decode is not in the figure.
    decoded = list(frames(path, yuv))
    pre = Preprocessor(PreprocessConfig(source="camera", min_usable_s=1.0))
    t0 = time.perf_counter()
    for frame in decoded:
        pre.push(frame)
    push_ms = (time.perf_counter() - t0) / len(decoded) * 1000
    out = {f"{stage}_ms": pre.stage_seconds[stage] / len(decoded) * 1000 for stage in STAGES}
    out.update(
        fps=n / elapsed,
        write_ms=write_ms,
        push_ms=push_ms,
        landmark_share=pre.landmark_runs / pre.frames_seen,
    )
    pre.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--resolutions", default="480p,720p,1080p")
    parser.add_argument("--repeats", type=int, default=3, help="best of N for the end-to-end runs")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "vitalcam-bench-preprocess"
    )
    parser.add_argument("--straightforward-frames", type=int, default=120, help="frames timed for (b)")
    args = parser.parse_args(argv)
    args.cache_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for name in args.resolutions.split(","):
        path = render(args.cache_dir, name, args.duration_s)
        print(f"{name}: {path}", flush=True)
        cv2_fps, _ = cv2_decode_fps(path)
        dec_bgr_ms = decode_ms(path, yuv=False)
        dec_ms = decode_ms(path, yuv=True)
        before = ours(path, yuv=False)
        after = ours(path, yuv=True)
        for _ in range(args.repeats - 1):  # best of N end to end: the least disturbed run
            before["fps"] = max(before["fps"], ours(path, yuv=False, stages=False)["fps"])
            after["fps"] = max(after["fps"], ours(path, yuv=True, stages=False)["fps"])
        naive_fps, naive_found = straightforward_fps(path, args.straightforward_frames)
        rows.append((name, cv2_fps, dec_bgr_ms, dec_ms, before, after, naive_fps, naive_found))
        print(f"{name}: done", flush=True)

    print()
    print(
        f"Videos: {args.cache_dir}/webcam_<res>_{args.duration_s:g}s.mp4 (render_bench_video, webcam preset)"
    )
    print("Per stage, ms per frame (push() on pre-decoded frames; 'before' = BGR frames, 'after' = I420)")
    header = (
        "| res | run | decode | landmarks | tracking | masks | extraction | patch | quality | tensor write "
        "| push() total | landmark share | live core share @30fps |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, _, dec_bgr_ms, dec_ms, before, after, _, _ in rows:
        for run, dec, m in (("before", dec_bgr_ms, before), ("after", dec_ms, after)):
            print(
                f"| {name} | {run} | {dec:.2f} | {m['landmarks_ms']:.2f} | {m['tracking_ms']:.2f} "
                f"| {m['masks_ms']:.2f} | {m['extraction_ms']:.2f} | {m['patch_ms']:.2f} "
                f"| {m['quality_ms']:.2f} | {m['write_ms']:.2f} | {m['push_ms']:.2f} "
                f"| {m['landmark_share']:.0%} | {m['push_ms'] * 30 / 1000:.1%} |"
            )
    print()
    print("End to end (process() on the replay source: decoding beside it on two cores, in line on one)")
    header = (
        "| res | (a) cv2 decode fps | before fps | after fps | after time / (a) | (b) naive fps "
        "| (b) face found | after vs (b) | after vs before |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, cv2_fps, _, _, before, after, naive_fps, naive_found in rows:
        print(
            f"| {name} | {cv2_fps:.0f} | {before['fps']:.0f} | {after['fps']:.0f} "
            f"| {cv2_fps / after['fps']:.2f}x | {naive_fps:.0f} | {naive_found:.0%} "
            f"| {after['fps'] / naive_fps:.1f}x | {after['fps'] / before['fps']:.2f}x |"
        )


if __name__ == "__main__":
    main()
