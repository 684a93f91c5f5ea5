"""What a person sees from the vitalcam console script: the result on stdout, progress and errors on stderr,
messages that name the actual cause and the next step, and exit codes that mean one thing each.

Every test runs the real console script in a subprocess (through a pseudo-terminal where the terminal
display is the point); nothing is mocked.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct
import subprocess
import termios
import time
from pathlib import Path

import av
import pytest

from contract.limits import MIN_CAPTURE_S
from tests.test_cli import VITALCAM, run

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No API settings inherited from the caller, and a private cache (outbox, demo video)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VITALCAM_")}
    environment["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    environment["GLOG_minloglevel"] = "2"
    return environment


def faststart_copy(source: Path, target: Path) -> Path:
    """The video remuxed with its index first, as phones and web exports write it: a cut-off copy then
    still opens and decodes up to the cut."""
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = out
            dst.mux(packet)
    return target


def cut(source: Path, target: Path, share: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * share)])
    return target


def test_result_on_stdout_progress_and_notes_on_stderr(face_video, env, tmp_path) -> None:
    """`vitalcam measure > result.txt` keeps the table in the file and shows progress and notes; a
    --duration longer than the video says that the whole (shorter) video was measured."""
    path, _ = face_video
    done = run(["measure", "--video", str(path), "--payload", "traces", "--duration", "60"], env)
    assert done.returncode == 0, done.stderr
    assert "Heart rate" in done.stdout and "No raw video frames left this device" in done.stdout
    assert "[CAPTURING]" not in done.stdout and "[CAPTURING]" in done.stderr
    assert "Heart rate" not in done.stderr
    assert "the video is 30.0 s long; measured all of it instead of the 60 s asked for" in done.stderr


def test_a_short_video_says_how_long_it_is(render_video, env) -> None:
    path, _ = render_video(duration_s=3.0)
    done = run(["measure", "--video", str(path), "--payload", "traces"], env)
    assert done.returncode == 4, done.stderr
    assert not done.stdout
    assert f"the video is 3.0 s long; at least {MIN_CAPTURE_S:g} s are needed" in done.stderr
    assert "hold still" not in done.stderr


def test_a_dark_video_says_it_is_too_dark_in_most_frames(render_video, env) -> None:
    path, _ = render_video(duration_s=17.0, brightness=0.12)
    done = run(["measure", "--video", str(path), "--payload", "traces"], env)
    assert done.returncode == 4, done.stderr
    found = re.search(r"the face is too dark in (\d+) % of the frames: add light", done.stderr)
    assert found and int(found.group(1)) >= 90, done.stderr
    assert "usable video" not in done.stderr


def test_a_truncated_file_is_measured_on_what_is_readable_and_says_so(face_video, env, tmp_path) -> None:
    path, _ = face_video
    whole = faststart_copy(path, tmp_path / "whole.mp4")
    most = cut(whole, tmp_path / "cut70.mp4", 0.7)
    done = run(["measure", "--video", str(most), "--payload", "traces"], env)
    assert done.returncode == 0, done.stderr
    note = re.search(
        r"the file is truncated: its header says 30\.0 s, and only (\d+\.\d) s could be read", done.stdout
    )
    assert note and 18.0 < float(note.group(1)) < 24.0, done.stdout
    half = cut(whole, tmp_path / "cut45.mp4", 0.45)
    done = run(["measure", "--video", str(half), "--payload", "traces"], env)
    assert done.returncode == 4, done.stderr
    assert "the file is truncated: its header says 30.0 s, and only" in done.stderr
    assert f"at least {MIN_CAPTURE_S:g} s are needed" in done.stderr


def test_usage_errors_use_words_and_one_minimum(env, tmp_path) -> None:
    done = run(["measure", "--duration", "abc"], env)
    assert done.returncode == 2
    assert "_duration" not in done.stderr
    assert f"--duration: must be a number of seconds, {MIN_CAPTURE_S:g}..180 s" in done.stderr
    report = tmp_path / "nonexistent" / "dir" / "r.html"
    started = time.monotonic()
    done = run(["measure", "--video", str(tmp_path / "any.mp4"), "--report", str(report)], env)
    assert done.returncode == 2 and f"the directory {report.parent} does not exist" in done.stderr
    assert time.monotonic() - started < 60  # refused before any capture
    assert not (tmp_path / "nonexistent").exists()


def test_a_path_without_its_option_is_answered_with_the_option(env, tmp_path) -> None:
    """`vitalcam measure clip.mp4` is the most natural thing to type; the error says what to type instead."""
    clip = tmp_path / "clip.mp4"
    done = run(["measure", str(clip)], env)
    assert done.returncode == 2
    assert f"unrecognized arguments: {clip}" in done.stderr
    assert f"--video {clip}" in done.stderr and f"--camera {clip}" in done.stderr
    done = run(["serve", "--no-such-flag"], env)
    assert done.returncode == 2 and "unrecognized arguments: --no-such-flag" in done.stderr
    assert "--video" not in done.stderr


def test_no_camera_is_quiet_about_opencv_and_says_what_to_do(env) -> None:
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a camera 0")
    done = run(["measure", "--camera", "0", "--no-preview"], env, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "no camera" in done.stderr and not done.stdout
    assert "WARN" not in done.stderr and "cap_v4l" not in done.stderr and "obsensor" not in done.stderr
    assert "--video FILE" in done.stderr and "vitalcam demo" in done.stderr
    listed = run(["cameras"], env, timeout=60)
    assert listed.returncode == 3 and "vitalcam demo" in listed.stderr and "WARN" not in listed.stderr


def test_serve_on_a_port_in_use_has_its_own_exit_code(env, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(["serve", "--port", str(port), "--data-dir", str(tmp_path / "data")], env, timeout=60)
    assert done.returncode == 6, done.stderr
    assert f"could not listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_revoking_an_unknown_key_quotes_only_the_id(env, tmp_path) -> None:
    done = run(["keys", "revoke", "bogus", "--data-dir", str(tmp_path / "data")], env)
    assert done.returncode == 2
    assert "vitalcam keys revoke: no API key with id 'bogus'" in done.stderr
    assert '"' not in done.stderr


def test_every_command_explains_itself(env) -> None:
    for command, words in (
        ("serve", "sessions API"),
        ("cameras", "cameras OpenCV can open"),
        ("bench", "benchmarks"),
    ):
        done = run([command, "--help"], env)
        assert done.returncode == 0
        description = done.stdout.split("\n\n")[1]  # usage, blank line, description
        assert words in description, done.stdout
    done = run(["measure", "--help"], env)
    assert "examples:" in done.stdout and "vitalcam measure --video clip.mp4" in done.stdout
    assert "vitalcam demo" in done.stdout


def in_terminal(
    args: list[str], environment: dict[str, str], columns: int = 100, timeout: float = 240
) -> str:
    """Run the console script on a pseudo-terminal `columns` wide; everything it wrote, escapes removed."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [VITALCAM, *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**environment, "TERM": "xterm"},
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the script exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    text = b"".join(chunks).decode("utf-8", "replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text)


def test_terminal_display_finishes_its_bars_and_wraps_between_words(face_video, env) -> None:
    path, _ = face_video
    screen = in_terminal(["measure", "--video", str(path), "--payload", "traces"], env, columns=100)
    # A terminal line is what is left after its last carriage return (progress bars redraw in place).
    lines = [line.split("\r")[-1] for line in screen.replace("\r\n", "\n").split("\n")]
    processing = [line for line in lines if line.lstrip().startswith("Processing")]
    assert processing and "100.0%" in processing[-1], processing[-3:]
    assert "-:--:--" not in processing[-1]
    start = next(i for i, line in enumerate(lines) if line.startswith("Uploaded "))
    block = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("Server processing"):
            break
        block.append(line.rstrip())
    assert len(block) >= 2 and all(len(line) <= 100 for line in block), block
    # Joined back with single spaces the block reads as one sentence: a word split across lines would not.
    text = " ".join(line.strip() for line in block)
    assert re.fullmatch(
        r"Uploaded [\d,]+ bytes: \d+ frames x \d+ skin regions \([a-z_, ]+\) of mean RGB; face box per "
        r"frame; no face patches \(traces-only\)\. No raw video frames left this device\.",
        text,
    ), text
