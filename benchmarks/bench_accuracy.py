"""Heart-rate accuracy beside the textbook pipeline, on the same videos in the same run.

    python -m benchmarks.bench_accuracy [--ubfc ../shared/data/ubfc-dev] [--windows whole,30,10]
        [--cache-dir DIR] [--jobs 2]

Runs `vitalcam evaluate --baseline textbook` on the realistic render set (`benchmarks.render_set`,
rendered once into the cache) and, when `--ubfc` points at UBFC-rPPG subjects, on those real videos,
and prints the summary tables (MAE, RMSE, MAPE, Pearson r, SNR, within 3 / 5 bpm, and vitalcam's readings
split by confidence) for each.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.render_set import render_set
from evaluation import evaluate, load
from evaluation.metrics import parse_windows
from evaluation.tables import summary_lines


def run(root: Path, windows: list[float | None], jobs: int, title: str) -> None:
    recordings = load(root, "ubfc-rppg")
    results = evaluate(recordings, windows, baseline=True, jobs=jobs)
    print(f"## {title} ({len(recordings)} videos)\n")
    print("\n".join(summary_lines([r for result in results for r in result.readings])), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ubfc", type=Path, help="UBFC-rPPG folder; skipped when absent")
    parser.add_argument("--windows", default="whole,30,10")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitalcam" / "calibration"
    parser.add_argument("--cache-dir", type=Path, default=cache)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    windows = parse_windows(args.windows)
    if args.ubfc is not None and args.ubfc.is_dir():
        run(args.ubfc, windows, args.jobs, f"Real videos: {args.ubfc}")
    run(
        render_set(args.cache_dir / "renders"),
        windows,
        args.jobs,
        "Realistic renders (benchmarks.render_set)",
    )


if __name__ == "__main__":
    main()
