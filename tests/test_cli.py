"""The vitalcam CLI end to end: replayed and camera-paced measurements, exit codes, JSON, report, outbox.

Everything runs the real console script in a subprocess against a real server (embedded, or
`vitalcam serve` in its own process); nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitalcam.session import MeasureOptions, Phase, iter_measurement

VITALCAM = str(Path(sys.executable).with_name("vitalcam"))
SPEC_VITALS = ("heart_rate", "respiratory_rate", "hrv", "spo2", "systolic_bp", "diastolic_bp", "confidence")

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: private cache (outbox, demo) and no API settings inherited from the caller."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAM_")}
    environment["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    environment["GLOG_minloglevel"] = "2"
    return environment


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VITALCAM, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_spec_shape(body: dict) -> None:
    """The upload-complete response of the spec: exact vitals keys, numeric values, status completed."""
    assert body["status"] == "completed"
    assert isinstance(body["session_id"], str) and len(body["session_id"]) == 36
    assert set(body["vitals"]) == set(SPEC_VITALS)
    assert all(isinstance(body["vitals"][k], int | float) for k in SPEC_VITALS)
    assert 0.0 <= body["vitals"]["confidence"] <= 1.0
    assert isinstance(body.get("quality"), dict)


def test_measure_video_against_embedded_backend(face_video, env, tmp_path) -> None:
    path, truth = face_video
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    done = run(["measure", "--video", str(path), "--json", "--report", str(report)], env)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert_spec_shape(body)
    assert "processing_time_ms" in body
    assert abs(body["vitals"]["heart_rate"] - truth.hr_bpm) <= 3.0
    assert body["vitals"]["confidence"] >= 0.5
    assert body["quality"]["source"]["spo2"] == "prior"
    html = report.read_text()
    for section in (
        "Pulse waveform",
        "Pulse spectrum",
        "Heart-rate track",
        "Breathing signal",
        "Quality timeline",
    ):
        assert f"<h2>{section}</h2>" in html
    assert html.count("data:image/png;base64,") == 5
    assert "prior (not measured by the camera)" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch


def test_measure_against_separate_serve_process(face_video, env, tmp_path) -> None:
    path, truth = face_video
    data_dir = tmp_path / "server-data"
    created = run(["keys", "create", "--developer", "cli-test", "--data-dir", str(data_dir)], env)
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip()
    assert api_key.startswith("ck_test_")
    port = free_port()
    server = subprocess.Popen(
        [VITALCAM, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        done = run(
            [
                "measure",
                "--video",
                str(path),
                "--json",
                "--payload",
                "traces",
                "--api-url",
                f"http://127.0.0.1:{port}",
                "--api-key",
                api_key,
            ],
            env,
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert_spec_shape(body)
    assert abs(body["vitals"]["heart_rate"] - truth.hr_bpm) <= 3.0
    listed = run(["keys", "list", "--data-dir", str(data_dir)], env)
    assert "cli-test" in listed.stdout and api_key not in listed.stdout


def test_camera_path_paced_in_real_time_with_phases(face_video, env) -> None:
    """A video file given as --camera goes through the OpenCV grabber thread at real-time pace."""
    path, _truth = face_video
    started = time.monotonic()
    done = run(["measure", "--camera", str(path), "--duration", "20", "--no-preview"], env)
    elapsed_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed_s >= 20.0  # frames arrived at camera pace, not decode speed
    log = done.stderr + done.stdout
    positions = [log.find(f"[{phase}]") for phase in ("INITIALIZING", "READINESS", "CAPTURING", "UPLOADING")]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), log
    assert "Heart rate" in done.stdout and "prior (not measured by the camera)" in done.stdout
    assert "No raw video frames left this device" in done.stdout


def test_python_callers_get_the_same_phases_as_events(face_video) -> None:
    path, _ = face_video
    options = MeasureOptions(source=path, replay=True, duration_s=20.0, preview=False, payload="traces")
    events = list(iter_measurement(options))
    phases = [e.phase for e in events]
    order = [Phase.INITIALIZING, Phase.CAPTURING, Phase.UPLOADING, Phase.PROCESSING, Phase.DONE]
    assert list(dict.fromkeys(phases)) == order
    capture_percents = [e.percent for e in events if e.phase is Phase.CAPTURING and e.percent is not None]
    assert capture_percents == sorted(capture_percents) and capture_percents[-1] == 100.0
    assert any(40.0 < p < 60.0 for p in capture_percents)  # progress spans the 20 s asked for
    outcome = events[-1].outcome
    assert outcome is not None and outcome.measurement.patches is None
    assert outcome.payload_bytes < 200_000
    assert outcome.timeline.face_present.mean() > 0.95


def test_exit_code_no_face(render_video, env) -> None:
    path, _ = render_video(scene="none", duration_s=20.0)
    done = run(["measure", "--video", str(path)], env)
    assert done.returncode == 4, done.stderr
    assert "not enough usable signal" in done.stderr and not done.stdout


def test_exit_code_bad_arguments_and_unreadable_input(env, tmp_path) -> None:
    assert run(["measure", "--duration", "-3"], env).returncode == 2
    too_long = run(["measure", "--duration", "600"], env)
    assert too_long.returncode == 2 and "16..180" in too_long.stderr
    assert run(["measure", "--sex", "Q"], env).returncode == 2
    missing = run(["measure", "--video", str(tmp_path / "missing.mp4")], env)
    assert missing.returncode == 2 and "missing.mp4" in missing.stderr
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert run(["measure", "--video", str(not_video)], env).returncode == 2
    assert run(["measure", "--api-url", "http://127.0.0.1:9", "--video", str(not_video)], env).returncode == 2


def test_exit_code_no_camera(env) -> None:
    done = run(["measure", "--camera", "/dev/video97", "--no-preview"], env, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "/dev/video97" in done.stderr


def test_exit_code_server_failure_keeps_tensor_in_outbox_then_retry(
    face_video, env, tmp_path, proxy, server
) -> None:
    """The server passes the check, then fails every start: exit 5, the tensor kept (its path said once),
    each retry told in words; `vitalcam retry` without --api-url sends it where it was meant to go."""
    path, _truth = face_video
    outbox = tmp_path / "outbox"
    proxy.plan("POST", START, *[UNAVAILABLE] * 4)
    done = run(
        [
            "measure",
            "--video",
            str(path),
            "--payload",
            "traces",
            "--api-url",
            proxy.url,
            "--api-key",
            server.api_key,
            "--outbox",
            str(outbox),
        ],
        env,
    )
    assert done.returncode == 5, done.stderr
    kept = list(outbox.glob("*.tensor"))
    assert len(kept) == 1 and done.stderr.count(str(kept[0])) == 1
    assert f"`vitalcam retry` uploads it to {proxy.url}" in done.stderr
    for attempt in (2, 3, 4):
        assert f"retrying ({attempt}/4) in " in done.stderr
    assert "HTTP 503 UNAVAILABLE" in done.stderr and "stamina" not in done.stderr + done.stdout
    started = proxy.count("POST", START)

    no_key = run(["retry", "--outbox", str(outbox)], env)
    assert no_key.returncode == 5
    assert f"saved for {proxy.url}" in no_key.stderr and "--api-key" in no_key.stderr
    assert proxy.count("POST", START) == started  # nothing was sent anywhere without the key

    retried = run(["retry", "--outbox", str(outbox), "--api-key", server.api_key], env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"completed by {proxy.url}" in retried.stdout and f"to {proxy.url}" in retried.stderr
    assert proxy.count("POST", START) == started + 1  # it went to the URL stored with the item
    assert not list(outbox.glob("*.tensor"))


def _ctrl_c_reaches_the_child() -> None:
    """A shell starts background jobs (`.ci/run &`, nohup) with SIGINT ignored and children inherit it,
    so Python would never raise KeyboardInterrupt: give the child what a terminal user's vitalcam has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_capture_exits_130_and_writes_nothing(face_video, env, tmp_path) -> None:
    path, _ = face_video
    report = tmp_path / "never.html"
    outbox = tmp_path / "outbox"
    proc = subprocess.Popen(
        [
            VITALCAM,
            "measure",
            "--camera",
            str(path),
            "--no-preview",
            "--report",
            str(report),
            "--outbox",
            str(outbox),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_ctrl_c_reaches_the_child,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[CAPTURING]" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    assert not report.exists()
    assert not outbox.exists() or not any(outbox.iterdir())
    assert not list(tmp_path.glob(".report-*"))


def test_measurement_too_long_for_patches_is_sent_as_traces_not_lost() -> None:
    from tests.tensors import make_measurement
    from vitalcam.session import _serialise

    long_one = make_measurement(duration_s=170.0, patches=True)  # 5100 patches ~ 79 MB > 64 MiB
    payload, sent, note = _serialise(long_one)
    assert sent.patches is None and "patches left out" in note
    assert len(payload) < 1_000_000
    short_one = make_measurement(duration_s=20.0, patches=True)
    payload, sent, note = _serialise(short_one)
    assert sent.patches is not None and note == ""


def test_report_of_a_fallback_says_not_a_measurement(tmp_path) -> None:
    """A too-short tensor gets fallback vitals from the real server; the report must not pass them off."""
    import numpy as np

    from contract.tensor import to_bytes
    from server import start_embedded
    from tests.tensors import make_measurement
    from transport import SessionClient
    from vitalcam.report import write_report
    from vitalcam.session import Outcome, QualityTimeline

    short = make_measurement(duration_s=10.0)
    with start_embedded() as server, SessionClient(server.base_url, server.api_key) as client:
        result = client.measure(to_bytes(short))
    assert result.is_fallback
    n = short.n_frames
    timeline = QualityTimeline(short.t_s - short.t_s[0], np.ones(n, bool), np.full(n, 120.0), np.zeros(n))
    outcome = Outcome(result, short, len(to_bytes(short)), timeline, server.base_url, True, 0)
    html = write_report(outcome, tmp_path / "fallback.html").read_text()
    assert "NOT A MEASUREMENT" in html and "TOO_SHORT" in html
    assert "Not available: TOO_SHORT" in html
    assert "fallback (not a measurement)" in html
    assert "<h2>Quality timeline</h2>" in html and html.count("data:image/png;base64,") == 1


def test_an_unreliable_heart_rate_never_looks_like_a_reading(tmp_path) -> None:
    """Traces without a pulse go through the real server: the heart rate comes back with a low confidence,
    and both the report (banner, row style, spectrum legend) and the terminal table mark it UNRELIABLE, in
    a colour of its own, with the number in parentheses; compressed input adds its warning."""
    import dataclasses
    import io

    import numpy as np
    from rich.console import Console

    from contract.tensor import VIDEO_BITS_PER_PIXEL_KEY, to_bytes
    from server import start_embedded
    from tests.simulate_traces import simulate
    from transport import SessionClient
    from vitalcam.console import print_result, vital_rows
    from vitalcam.report import write_report
    from vitalcam.session import Outcome, QualityTimeline

    noise, _ = simulate(with_pulse=False, noise_std=0.3, seed=3)
    noise = dataclasses.replace(noise, extra_metadata={VIDEO_BITS_PER_PIXEL_KEY: "0.012"})
    with start_embedded() as server, SessionClient(server.base_url, server.api_key) as client:
        result = client.measure(to_bytes(noise))
    assert not result.is_fallback and result.vitals.confidence < 0.5
    hr_row = next(r for r in vital_rows(result) if r["key"] == "heart_rate")
    assert hr_row["kind_code"] == "unreliable" and hr_row["value_text"].startswith("(")
    n = noise.n_frames
    timeline = QualityTimeline(noise.t_s - noise.t_s[0], np.ones(n, bool), np.full(n, 120.0), np.zeros(n))
    outcome = Outcome(result, noise, len(to_bytes(noise)), timeline, server.base_url, True, 0)
    html = write_report(outcome, tmp_path / "unreliable.html").read_text()
    assert '<p class="unreliable">UNRELIABLE' in html and '<tr class="unreliable">' in html
    assert "COMPRESSED_VIDEO" not in html and "heavily compressed" in html
    terminal = io.StringIO()
    print_result(Console(file=terminal, force_terminal=True, color_system="truecolor", width=150), outcome)
    text = terminal.getvalue()
    assert "UNRELIABLE" in text and "heavily compressed" in text
    measured_colour, unreliable_colour = "\x1b[32m", "\x1b[35m"  # green vs magenta
    assert unreliable_colour in text
    line = next(line for line in text.splitlines() if "Heart rate" in line)
    assert measured_colour not in line and unreliable_colour in line


def test_serve_on_a_public_address_without_a_public_url_is_a_usage_error(env, tmp_path) -> None:
    result = run(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path / "data")], env)
    assert result.returncode == 2
    assert "VITALCAM_PUBLIC_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


# ---- before and after a measurement (issue 15, items 1-4) ------------------------------------------------

START = "/sdk/session/start"
UNAVAILABLE = ("respond", 503, {"error": "UNAVAILABLE", "message": "restarting", "retryable": True}, {})


@pytest.fixture(scope="module")
def server():
    """The reference server in this process, for the fault proxy (tests/conftest.py) to stand in front of."""
    from tests.fault_proxy import backend

    with backend() as b:
        yield b


def test_unreachable_server_fails_before_the_capture(face_video, env, tmp_path) -> None:
    path, _ = face_video
    port = free_port()  # nothing listens here
    outbox = tmp_path / "outbox"
    url = f"http://127.0.0.1:{port}"
    args = ["--video", str(path), "--api-url", url, "--api-key", "ck_test_x", "--outbox", str(outbox)]
    done = run(["measure", *args], env)
    assert done.returncode == 5 and not done.stdout
    assert f"no answer from http://127.0.0.1:{port}: connection refused" in done.stderr
    assert "check --api-url / VITALCAM_API_URL" in done.stderr
    assert "[CAPTURING]" not in done.stderr and "vitalcam retry" not in done.stderr
    assert not outbox.exists()  # nothing was measured, so nothing is kept


def test_wrong_api_key_fails_before_the_capture_and_names_the_setting(face_video, env, server) -> None:
    path, _ = face_video
    args = ["--video", str(path), "--api-url", server.base_url, "--api-key", "ck_test_wrong"]
    done = run(["measure", *args], env)
    assert done.returncode == 5 and not done.stdout
    assert f"{server.base_url} did not accept the API key: check --api-key / VITALCAM_API_KEY" in done.stderr
    assert "[CAPTURING]" not in done.stderr and "vitalcam retry" not in done.stderr


def test_a_401_after_the_capture_says_check_the_key_and_the_path_once(
    face_video, env, tmp_path, proxy, server
) -> None:
    """The key passed the check and was revoked before the start: keep the tensor, point at the key."""
    path, _ = face_video
    outbox = tmp_path / "outbox"
    revoked = ("respond", 401, {"error": "API_KEY_INVALID", "message": "revoked", "retryable": False}, {})
    proxy.plan("POST", START, revoked)
    args = ["--video", str(path), "--payload", "traces", "--api-url", proxy.url, "--api-key", server.api_key]
    done = run(["measure", *args, "--outbox", str(outbox)], env)
    assert done.returncode == 5, done.stderr
    [kept] = outbox.glob("*.tensor")
    assert done.stderr.count(str(kept)) == 1
    assert "check --api-key / VITALCAM_API_KEY" in done.stderr
    assert "`vitalcam retry --api-key KEY` uploads it with a valid key" in done.stderr
    assert "run `vitalcam retry` to upload it again" not in done.stderr
    assert proxy.count("POST", START) == 1  # a 401 is not retried


def test_retry_sends_an_item_saved_without_a_url_to_the_embedded_backend(env, tmp_path) -> None:
    from tests.tensors import make_payload
    from transport import Outbox

    outbox = Outbox(tmp_path / "outbox")
    outbox.save(make_payload(duration_s=20.0))  # what an embedded measurement that failed leaves
    retried = run(["retry", "--outbox", str(outbox.directory)], env)
    assert retried.returncode == 0, retried.stderr
    assert "completed by the embedded reference backend" in retried.stdout
    assert "sending 1 measurement(s) to the embedded reference backend" in retried.stderr
    assert outbox.pending() == [] and len(list(outbox.results_dir.iterdir())) == 1


def test_ctrl_c_during_the_upload_keeps_the_measurement(face_video, env, tmp_path, proxy, server) -> None:
    """The capture is done when the upload starts: cancelling then must not throw the measurement away."""
    path, _truth = face_video
    outbox = tmp_path / "outbox"
    proxy.plan("POST", START, *[UNAVAILABLE] * 4)
    proc = subprocess.Popen(
        [VITALCAM, "measure", "--video", str(path), "--payload", "traces", "--api-url", proxy.url,
         "--api-key", server.api_key, "--outbox", str(outbox)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ctrl_c_reaches_the_child,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "retrying (2/4)" in line:  # the upload is under way, waiting before its next attempt
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    kept = list(outbox.glob("*.tensor"))
    assert len(kept) == 1 and str(kept[0]) in rest, rest
    retried = run(["retry", "--outbox", str(outbox), "--api-key", server.api_key], env)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert not list(outbox.glob("*.tensor"))
