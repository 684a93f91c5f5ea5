"""`vitalcam worker` with the real engine and one fault switch, for the scaled tests.

Run as `python -m tests.fault_worker [worker options]` with VITALCAM_TEST_CONTROL_DIR set. Every inference
appends this process's pid to `calls.log` there. When a test creates `hold-next`, the first worker to
start an inference removes it (only one can), writes `held-by-<pid>` and hangs in that job until the test
kills it (the way to SIGKILL a worker while it provably holds a job) or creates `release`, which lets the
job finish normally. Everything else is the CLI's worker.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server import inference

CONTROL_ENV = "VITALCAM_TEST_CONTROL_DIR"
HOLD_NEXT = "hold-next"
RELEASE = "release"
CALLS_LOG = "calls.log"
_real_infer = inference.infer


def held_by(control: Path) -> list[int]:
    return sorted(int(p.name.rsplit("-", 1)[1]) for p in control.glob("held-by-*"))


def calls(control: Path) -> list[int]:
    log = control / CALLS_LOG
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _infer(measurement: Any, demographics: Mapping[str, Any] | None) -> Any:
    control = Path(os.environ[CONTROL_ENV])
    with (control / CALLS_LOG).open("a") as log:
        log.write(f"{os.getpid()}\n")
    try:
        (control / HOLD_NEXT).unlink()
    except FileNotFoundError:
        return _real_infer(measurement, demographics)
    (control / f"held-by-{os.getpid()}").touch()
    deadline_s = time.monotonic() + 3600
    while time.monotonic() < deadline_s:  # until the test SIGKILLs this process, or releases the job
        try:
            (control / RELEASE).unlink()
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        (control / f"held-by-{os.getpid()}").unlink()
        return _real_infer(measurement, demographics)
    raise RuntimeError("a held job was never killed or released")


def main(argv: list[str]) -> int:
    inference.infer = _infer  # server.processing.default_infer looks it up at call time
    from vitalcam.cli import main as cli_main

    return cli_main(["worker", *argv])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
