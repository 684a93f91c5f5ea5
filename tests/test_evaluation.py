"""Dataset evaluation: loaders for each layout, the reference and the metrics, and `vitalcam evaluate`
end to end on renders written in the UBFC-rPPG layout (and, when present, on the real development set)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from capture.synthetic import render_preset
from evaluation import DatasetError, Recording, Reference, detect_layout, evaluate_recording, load
from evaluation.metrics import parse_windows, reference_hr_bpm, snr_at_db, summarize, window_spans

UBFC_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ubfc-dev"
# (name, preset, heart rate, pulse amplitude): a webcam H.264 recording, a fast heart rate over MJPG
# and a video without any pulse, which must not be scored as a measurement.
RENDERS = (
    ("subject1", "webcam", 72.0, 0.008),
    ("subject2", "webcam-mjpeg", 118.0, 0.007),
    ("subject3", "webcam", 70.0, 0.0),
)


@pytest.fixture(scope="module")
def ubfc_renders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ubfc")
    for i, (name, preset, hr, amplitude) in enumerate(RENDERS):
        folder = root / name
        folder.mkdir()
        video = folder / ("vid.avi" if "mjpeg" in preset else "vid.mp4")
        render_preset(
            video, preset, duration_s=24.0, hr_bpm=hr, pulse_amplitude=amplitude, rr_bpm=13.0 + i,
            seed=40 + i, ppg_path=folder / "ground_truth.txt",
        )  # fmt: skip
    return root


# -- loaders ---------------------------------------------------------------------------------------------


def test_ubfc_layout_is_found_and_read(ubfc_renders: Path) -> None:
    assert detect_layout(ubfc_renders) == "ubfc-rppg"
    recordings = load(ubfc_renders)
    assert [r.name for r in recordings] == ["subject1", "subject2", "subject3"]
    first = recordings[0]
    assert first.video is not None and first.video.name == "vid.mp4"
    assert first.reference.t_s is None and first.reference.ppg is not None  # aligned by frame index
    assert first.reference.ppg.shape == (24 * 30,)


def test_folder_layout_with_ppg_or_hr_columns(tmp_path: Path, ubfc_renders: Path) -> None:
    video = ubfc_renders / "subject1" / "vid.mp4"
    (tmp_path / "a.mp4").symlink_to(video)
    (tmp_path / "b.mp4").symlink_to(video)
    ppg = np.loadtxt(ubfc_renders / "subject1" / "ground_truth.txt")
    with (tmp_path / "a.csv").open("w") as handle:
        handle.write(
            "time_s,ppg\n" + "".join(f"{t:.4f},{v:.5f}\n" for t, v in zip(ppg[2], ppg[0], strict=True))
        )
    with (tmp_path / "b.csv").open("w") as handle:
        handle.write(
            "time_s,hr_bpm\n" + "".join(f"{t:.4f},{h:.2f}\n" for t, h in zip(ppg[2], ppg[1], strict=True))
        )
    recordings = load(tmp_path)
    assert detect_layout(tmp_path) == "folder" and [r.name for r in recordings] == ["a", "b"]
    a, b = recordings
    assert a.reference.ppg is not None and a.reference.hr_bpm is None
    assert b.reference.hr_bpm is not None and b.reference.ppg is None
    # Both references give the rate that was rendered.
    assert abs(reference_hr_bpm(a.reference.t_s, a.reference.ppg, None) - 72.0) < 2.0  # type: ignore[arg-type]
    assert abs(reference_hr_bpm(b.reference.t_s, None, b.reference.hr_bpm) - 72.0) < 2.0  # type: ignore[arg-type]


def _write_pure(
    root: Path, video: Path, ppg_line: np.ndarray, name: str = "01-01", seconds: float = 16.0
) -> None:
    """A PURE-layout copy of the first `seconds` of a render, at 480x360 (PURE's frames are 640x480;
    smaller keeps the test's disk use down): PNG frames named by nanosecond timestamps, and the JSON."""
    frames_dir = root / name
    frames_dir.mkdir(parents=True)
    start_ns = 1_392_643_993_630_566_000
    images = []
    capture = cv2.VideoCapture(str(video))
    index = 0
    while index < round(seconds * 30.0):
        ok, image = capture.read()
        if not ok:
            break
        ns = start_ns + round(index * 1e9 / 30.0)
        small = cv2.resize(image, (480, 360), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(frames_dir / f"Image{ns}.png"), small, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        images.append({"Timestamp": ns})
        index += 1
    capture.release()
    # The oximeter samples at 60 Hz on its own clock, starting a little before the camera.
    t_ppg = np.arange(-0.2, index / 30.0, 1.0 / 60.0)
    wave = np.interp(t_ppg, np.arange(ppg_line.shape[0]) / 30.0, ppg_line)
    package = [
        {
            "Timestamp": start_ns + round(t * 1e9),
            "Value": {
                "waveform": round(40 + 20 * w),
                "pulseRate": 72,
                "o2saturation": 98,
                "signalStrength": 4,
            },
        }
        for t, w in zip(t_ppg, wave, strict=True)
    ]
    (root / f"{name}.json").write_text(json.dumps({"/FullPackage": package, "/Image": images}))


@pytest.mark.slow
def test_pure_layout_png_frames_and_json_timestamps(tmp_path: Path, ubfc_renders: Path) -> None:
    ppg = np.loadtxt(ubfc_renders / "subject1" / "ground_truth.txt")[0]
    _write_pure(tmp_path, ubfc_renders / "subject1" / "vid.mp4", ppg)
    assert detect_layout(tmp_path) == "pure"
    (recording,) = load(tmp_path)
    assert recording.name == "01-01" and len(recording.frames) == 16 * 30 and recording.video is None
    assert recording.reference.t_s is not None and recording.reference.t_s[0] < 0  # oximeter started first
    result = evaluate_recording(recording, [None])
    (reading,) = result.readings
    assert abs(reading.reference_bpm - 72.0) < 2.0
    assert abs(reading.hr_bpm - reading.reference_bpm) <= 3.0, reading


def test_bad_datasets_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load(tmp_path / "missing")
    (tmp_path / "subject1").mkdir()
    (tmp_path / "subject1" / "ground_truth.txt").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match=r"subject1: ground_truth.txt but no video"):
        load(tmp_path)
    (tmp_path / "subject1" / "vid.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"ground_truth.txt: expected lines PPG, HR, time"):
        load(tmp_path)
    other = tmp_path / "folder"
    other.mkdir()
    (other / "x.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"x.mp4: no x.csv beside it"):
        load(other, "folder")
    (other / "x.csv").write_text("t,value\n0,1\n")
    with pytest.raises(DatasetError, match=r"x.csv: needs a time_s column"):
        load(other, "folder")
    pure = tmp_path / "pure"
    pure.mkdir()
    (pure / "01-01.json").write_text('{"/Image": []}')
    with pytest.raises(DatasetError, match=r"01-01.json: not a PURE ground-truth file"):
        load(pure, "pure")


# -- reference and metrics -------------------------------------------------------------------------------


def test_windows_parse_and_tile_the_record() -> None:
    assert parse_windows("whole,30,10") == [None, 30.0, 10.0]
    for bad in ("whole,abc", "2", "500", ""):
        with pytest.raises(ValueError):
            parse_windows(bad)
    assert window_spans(68.5, None) == [(0.0, 68.5)]
    assert window_spans(68.5, 30.0) == [(0.0, 30.0), (30.0, 60.0)]
    assert window_spans(9.0, 10.0) == []


def test_reference_is_the_ppg_periodogram_peak_and_snr_is_measured_at_it() -> None:
    t = np.arange(0, 30, 1 / 60)
    ppg = np.sin(2 * np.pi * 1.5 * t) + 0.4 * np.sin(2 * np.pi * 3.0 * t + 1.0)  # 90 bpm with a harmonic
    assert reference_hr_bpm(t, ppg, None) == pytest.approx(90.0, abs=0.5)
    assert reference_hr_bpm(t, None, np.full(t.shape, 77.0)) == pytest.approx(77.0)
    assert math.isnan(reference_hr_bpm(t, None, None))
    rng = np.random.default_rng(0)
    clean = snr_at_db(np.sin(2 * np.pi * 1.5 * t) + 0.1 * rng.normal(size=t.size), 60.0, 90.0)
    noisy = snr_at_db(np.sin(2 * np.pi * 1.5 * t) + 2.0 * rng.normal(size=t.size), 60.0, 90.0)
    assert clean > 10.0 > noisy


def test_summary_metrics() -> None:
    s = summarize([70.0, 82.0, float("nan"), 100.0], [72.0, 80.0, 90.0, 90.0], [1.0, 2.0, 3.0, float("nan")])
    assert (s.n, s.n_readings) == (4, 3)
    assert s.mae == pytest.approx((2 + 2 + 10) / 3)
    assert s.rmse == pytest.approx(math.sqrt((4 + 4 + 100) / 3))
    assert s.within_3 == pytest.approx(2 / 3) and s.within_5 == pytest.approx(2 / 3)
    assert s.snr_db == pytest.approx(1.5)
    assert s.mape_pct == pytest.approx(100 * (2 / 72 + 2 / 80 + 10 / 90) / 3)


# -- end to end ------------------------------------------------------------------------------------------


def _run_evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "vitalcam.cli", "evaluate", *args], capture_output=True, text=True, env=env
    )


def test_a_textbook_face_found_only_at_the_end_of_a_span_is_no_face_not_a_crash() -> None:
    """A render whose textbook FaceMesh found the face in the last 25 frames failed the whole recording
    (CHROM's 1.6 s kernel is longer than the trace): it must read "no face found" for that span, and the
    span where the trace is whole must still be read."""
    from benchmarks.baselines import Traces, estimate_hr_bpm
    from evaluation.runner import _baseline_readings

    fs_hz, hr_bpm = 30.0, 72.0
    t_s = np.arange(9.2, 20.0, 1 / fs_hz)  # the face first found at 9.2 s
    pulse = 0.5 * np.sin(2 * np.pi * hr_bpm / 60 * t_s)
    rgb = np.stack([150 + 0.3 * pulse, 110 + pulse, 90 + 0.2 * pulse], axis=1)
    traces = Traces(t_s=t_s, rgb=rgb, face_found=np.ones(t_s.size, bool))
    recording = Recording("late-face", Reference(t_s=None, ppg=None, hr_bpm=None))
    readings = _baseline_readings(recording, 10.0, [(0.0, 10.0), (10.0, 20.0)], [hr_bpm, hr_bpm], traces)
    early, late = readings[:3], readings[3:]
    assert all(r.note == "no face found" and math.isnan(r.hr_bpm) for r in early)
    assert all(abs(r.hr_bpm - hr_bpm) < 1.0 for r in late), late
    with pytest.raises(ValueError, match="25 samples"):
        estimate_hr_bpm("chrom", rgb[-25:], fs_hz)


@pytest.mark.slow
def test_vitalcam_evaluate_on_renders_in_the_ubfc_layout(ubfc_renders: Path, tmp_path: Path) -> None:
    report, table = tmp_path / "eval.html", tmp_path / "eval.csv"
    done = _run_evaluate(
        str(ubfc_renders), "--baseline", "textbook", "--windows", "whole,10", "--report", str(report),
        "--csv", str(table), "--jobs", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Progress only: mediapipe's C++ start-up lines (both pipelines' FaceMesh) are kept off the terminal.
    assert "W0000" not in done.stderr and ".cc:" not in done.stderr, done.stderr
    assert "### window: whole" in done.stdout and "### window: 10 s" in done.stdout
    assert "| vitalcam |" in done.stdout and "| textbook-pos |" in done.stdout
    rows = list(csv.DictReader(table.open()))
    whole = {(r["recording"], r["method"]): r for r in rows if r["window_s"] == "whole"}
    assert {m for _, m in whole} == {"vitalcam", "textbook-green", "textbook-chrom", "textbook-pos"}
    for name, _, hr, amplitude in RENDERS:
        reading = whole[(name, "vitalcam")]
        if amplitude > 0:
            assert abs(float(reading["reference_bpm"]) - hr) < 2.0
            assert abs(float(reading["error_bpm"])) <= 3.0, reading
            assert float(reading["confidence"]) >= 0.5, reading
        else:  # no pulse at all: whatever the peak, it must not be presented as a measurement
            assert reading["confidence"] == "-" or float(reading["confidence"]) <= 0.2, reading
    assert len([r for r in rows if r["window_s"] == "10.0" and r["method"] == "vitalcam"]) == 6
    text = report.read_text()
    for section in ("Summary", "Per recording", "Estimate against reference", "Bland-Altman", "Reliability"):
        assert section in text
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_vitalcam_evaluate_rejects_bad_arguments(tmp_path: Path) -> None:
    done = _run_evaluate(str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "not a directory" in done.stderr
    done = _run_evaluate(str(tmp_path), "--windows", "whole,3")
    assert done.returncode == 2 and "window 3 s is outside 5..180 s" in done.stderr
    render_dir = tmp_path / "data" / "subject1"
    render_dir.mkdir(parents=True)
    (render_dir / "vid.avi").write_bytes(b"")
    (render_dir / "ground_truth.txt").write_text("1 2\n70 70\n0 1\n")
    done = _run_evaluate(str(tmp_path / "data"), "--report", str(tmp_path / "missing" / "r.html"))
    assert done.returncode == 2 and "does not exist" in done.stderr and "--report" in done.stderr
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
@pytest.mark.skipif(not UBFC_DEV.is_dir(), reason="the real development subjects are not on this machine")
def test_real_subjects_beat_the_textbook_baseline(tmp_path: Path) -> None:
    """The real-video promise: on the UBFC-rPPG development subjects vitalcam's whole-video MAE is under
    half the textbook POS pipeline's, every confident reading is within 5 bpm, and most are confident."""
    table = tmp_path / "real.csv"
    done = _run_evaluate(
        str(UBFC_DEV), "--baseline", "textbook", "--windows", "whole,30", "--csv", str(table), "--jobs", "2"
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(table.open()))

    def mae(method: str, window: str) -> float:
        return float(
            np.mean(
                [
                    abs(float(r["error_bpm"]))
                    for r in rows
                    if r["method"] == method and r["window_s"] == window
                ]
            )
        )

    for window in ("whole", "30.0"):
        assert mae("vitalcam", window) <= 0.5 * mae("textbook-pos", window), window
    ours = [r for r in rows if r["method"] == "vitalcam"]
    confident = [r for r in ours if float(r["confidence"]) >= 0.5]
    assert len(confident) >= 0.5 * len(ours)
    assert all(abs(float(r["error_bpm"])) <= 5.0 for r in confident)
