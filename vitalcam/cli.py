"""vitalcam: camera vital signs (rPPG). Measures on this device, infers on a sessions-API backend.

Without --api-url every measurement runs against the embedded reference backend on 127.0.0.1.

Results go to stdout; progress, notes and errors to stderr (`vitalcam measure > result.txt` still shows
why a measurement failed).

Exit codes: 0 success, 1 internal error, 2 bad arguments or unreadable input, 3 no camera,
4 no face or quality too low, 5 server or network failure (the tensor is kept in the outbox),
6 `serve` could not start (the port is in use or may not be bound), 130 cancelled (Ctrl-C or q in
the preview).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from contract import __version__
from contract.limits import MAX_AGE_YEARS, MAX_CAPTURE_S, MIN_AGE_YEARS, MIN_CAPTURE_S

# The CLI starts fast: rich, the pipeline and the server load only when a command needs them.
if TYPE_CHECKING:
    from rich.console import Console

    from capture.synthetic import SyntheticTruth
    from server import KeyInfo
    from transport import RetryNotice, VitalcamError
    from vitalcam.session import MeasureOptions, Outcome

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_NO_CAMERA = 3
EXIT_QUALITY = 4
EXIT_SERVER = 5
EXIT_SERVE_FAILED = 6  # `vitalcam serve` could not start listening; distinct from 3, "no camera"
EXIT_CANCELLED = 130


def _camera_spec(text: str) -> int | str:
    return int(text) if text.isdigit() else text


# Inference needs MIN_USABLE_S of usable signal; a capture of exactly that spans one frame interval less.
MIN_DURATION_S = MIN_CAPTURE_S
MAX_DURATION_S = MAX_CAPTURE_S  # the tensor format's limit


def _duration(text: str) -> float:
    limits = f"{MIN_DURATION_S:g}..{MAX_DURATION_S:g} s (the least inference needs, the most a tensor holds)"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, {limits}; got {text!r}") from None
    if not MIN_DURATION_S <= value <= MAX_DURATION_S:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be {limits}, got {text}")
    return value


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        default=os.environ.get("VITALCAM_API_URL"),
        help="sessions-API base URL (env VITALCAM_API_URL); default: the embedded reference backend",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VITALCAM_API_KEY"),
        help="API key, ck_test_... (env VITALCAM_API_KEY)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitalcam", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vitalcam {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    m = commands.add_parser(
        "measure",
        help="measure vitals from a camera or a recorded video",
        description=(
            "Measure vitals: camera 0 for 30 s by default, or replay a recorded video with --video. The "
            "result table goes to stdout; progress, hints and errors go to stderr."
        ),
        epilog=MEASURE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = m.add_mutually_exclusive_group()
    where.add_argument(
        "--camera",
        type=_camera_spec,
        default=0,
        metavar="N|PATH|URL",
        help="camera index, device path or stream URL; a video file here plays in real time as if it were a camera",
    )
    where.add_argument(
        "--video", type=Path, metavar="PATH", help="replay a recorded video file instead of a camera"
    )
    m.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="S",
        help=(
            f"seconds to capture, {MIN_DURATION_S:g}..{MAX_DURATION_S:g} (default 30 for a camera; the whole "
            f"video, up to {MAX_DURATION_S:g} s, for --video)"
        ),
    )
    m.add_argument(
        "--age",
        type=int,
        help=f"age in years ({MIN_AGE_YEARS}..{MAX_AGE_YEARS}), improves the blood-pressure prior",
    )
    m.add_argument("--sex", choices=["M", "F", "X"], help="sex, improves the blood-pressure prior")
    m.add_argument(
        "--fitzpatrick", type=int, choices=range(1, 7), metavar="1..6", help="Fitzpatrick skin type"
    )
    _add_backend_options(m)
    m.add_argument(
        "--payload",
        choices=["full", "traces"],
        default="full",
        help="full: traces and 72x72 face patches; traces: colour traces only (smaller, more private)",
    )
    m.add_argument(
        "--regions",
        choices=["face", "full-frame"],
        default="face",
        help="face: forehead and cheek regions from face landmarks; full-frame: the whole frame is skin",
    )
    m.add_argument("--json", action="store_true", help="print only the result JSON (the server's response)")
    m.add_argument("--report", type=Path, metavar="PATH.html", help="write a self-contained HTML report")
    m.add_argument("--no-preview", action="store_true", help="do not open the preview window")
    m.add_argument(
        "--outbox", type=Path, metavar="DIR", help="where failed uploads are kept for `vitalcam retry`"
    )

    d = commands.add_parser(
        "demo",
        help="measure a generated demo face video and compare with the truth",
        description=_demo_help(),
    )
    d.add_argument("--report", type=Path, metavar="PATH.html", help="also write the HTML report")

    s = commands.add_parser(
        "serve",
        help="run the reference backend (sessions API) with uvicorn",
        description=(
            "Run the reference backend: the sessions API of docs/api.md with real rPPG inference, until "
            "Ctrl-C. Create a key first with `vitalcam keys create`; a host other than loopback needs "
            f"VITALCAM_PUBLIC_BASE_URL. Exits {EXIT_SERVE_FAILED} when it cannot listen (port in use)."
        ),
        epilog="example: vitalcam serve --port 8000 --data-dir ./vitalcam-data",
    )
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--data-dir", type=Path, help="data directory (default: VITALCAM_DATA_DIR or the user data dir)"
    )
    _add_scale_arguments(s)
    s.add_argument(
        "--workers", type=int, default=1, help="API processes on the one port (above 1 needs --database-url)"
    )
    w = commands.add_parser(
        "worker",
        help="run an inference worker for `vitalcam serve --queue ...` (docs/deploy.md)",
        description="Take inference jobs from the queue until Ctrl-C / SIGTERM; a job a worker dies in is "
        "retried once by another worker.",
        epilog="example: vitalcam worker --queue redis://127.0.0.1:6379/0 --database-url postgresql://... "
        "--blob-store 's3://bucket?endpoint=http://127.0.0.1:9000'",
    )
    w.add_argument("--data-dir", type=Path, help="data directory (for a folder blob store)")
    _add_scale_arguments(w)
    w.add_argument("--concurrency", type=int, default=1, help="jobs at once in this worker (default 1)")
    w.add_argument("--job-timeout", type=float, default=120.0, help="seconds before a job counts as lost")

    k = commands.add_parser("keys", help="create, revoke and list API keys of the reference backend")
    key_commands = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kc = key_commands.add_parser("create", help="create a key for a developer and print it once")
    kc.add_argument("--developer", required=True, help="developer (account) name the key belongs to")
    kc.add_argument("--live", action="store_true", help="create a ck_live_ key instead of ck_test_")
    kr = key_commands.add_parser("revoke", help="revoke a key by the id shown in `keys list`")
    kr.add_argument("key_id", help="key id from `vitalcam keys list`")
    kl = key_commands.add_parser("list", help="list keys (ids, developers, status; never the secrets)")
    for sub in (kc, kr, kl):
        sub.add_argument("--data-dir", type=Path, help="data directory, the same as `vitalcam serve` uses")
        sub.add_argument(
            "--database-url",
            help="the PostgreSQL of `vitalcam serve --database-url` (env VITALCAM_DATABASE_URL; default the "
            "data directory's SQLite)",
        )

    r = commands.add_parser(
        "retry",
        help="upload the measurements kept in the outbox",
        description="Replay every pending outbox item.",
    )
    _add_backend_options(r)
    r.add_argument(
        "--outbox", type=Path, metavar="DIR", help="outbox directory (default: the user cache dir)"
    )

    b = commands.add_parser(
        "bench",
        help="run the benchmarks in benchmarks/ (from a source checkout)",
        description=(
            "Run the throughput and accuracy benchmarks of a source checkout, one Python module each "
            "(benchmarks/bench_NAME.py); results are printed, and described in benchmarks/README.md."
        ),
        epilog="example: vitalcam bench capture preprocess",
    )
    b.add_argument(
        "names", nargs="*", help="benchmarks to run (capture, preprocess, server, inference); default all"
    )

    commands.add_parser(
        "cameras",
        help="list the cameras OpenCV can open",
        description=(
            "List the cameras OpenCV can open (on Linux, the /dev/video* devices), with the size and frame "
            f"rate each delivers by default. Exits {EXIT_NO_CAMERA} when there is none."
        ),
    )

    e = commands.add_parser(
        "evaluate",
        help="score heart rate on a dataset with a contact reference (UBFC-rPPG, PURE, video+CSV)",
        description=(
            "Run capture, preprocessing and the reference engine in-process on every recording of a dataset "
            "and score the heart rate against the contact sensor: MAE, RMSE, MAPE, Pearson r, SNR, share "
            "within 3 / 5 bpm, and the same split by confidence, per window length."
        ),
        epilog="example: vitalcam evaluate ~/data/UBFC-rPPG/DATASET_2 --baseline textbook --report eval.html",
    )
    e.add_argument("path", type=Path, help="dataset folder")
    e.add_argument(
        "--layout", choices=["ubfc-rppg", "pure", "folder"], help="dataset layout (default: detect)"
    )
    e.add_argument(
        "--windows",
        default="whole,30,10",
        help="window lengths: 'whole' and/or seconds (default whole,30,10)",
    )
    e.add_argument(
        "--baseline", choices=["textbook"], help="also run the textbook pipeline on the same videos"
    )
    e.add_argument("--report", type=Path, metavar="PATH.html", help="write the HTML report")
    e.add_argument("--csv", type=Path, metavar="PATH.csv", help="write every reading as CSV")
    e.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="recordings evaluated in parallel (default 1)"
    )
    return parser


MEASURE_EXAMPLES = """examples:
  vitalcam measure                                   camera 0, 30 s, preview window if a display exists
  vitalcam measure --camera 1 --duration 45 --age 35 --sex F
  vitalcam measure --video clip.mp4 --report report.html
  vitalcam measure --video clip.mp4 --json > result.json
  vitalcam measure --api-url https://vitals.example --api-key ck_live_...
no camera? `vitalcam demo` measures a generated face video."""


def _demo_help() -> str:
    return (
        "Render (once, then cached) a 30 s face video with a known pulse, breathing and head motion from a "
        "face photo shipped with scikit-image, measure it against the embedded backend, and print measured "
        "against true values. Needs no camera and no network."
    )


def _hint_for(command: str | None, extra: list[str]) -> str:
    """The likely intent behind a stray argument: `vitalcam measure clip.mp4` means a replay."""
    if command == "measure" and len(extra) == 1 and not extra[0].startswith("-"):
        return f" (to replay a recorded video: --video {extra[0]}; a camera or stream: --camera {extra[0]})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{_hint_for(args.command, extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {
        "measure": cmd_measure,
        "demo": cmd_demo,
        "serve": cmd_serve,
        "worker": cmd_worker,
        "keys": cmd_keys,
        "retry": cmd_retry,
        "bench": cmd_bench,
        "cameras": cmd_cameras,
        "evaluate": cmd_evaluate,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        print(f"cancelled: {exc}" if str(exc) else "cancelled", file=sys.stderr)
        return EXIT_CANCELLED


def _console(stderr: bool = False) -> Console:
    """stdout carries results, stderr progress, notes and errors (so a redirected result still shows why)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A terminal gets rich's word wrapping at its width (a long line never breaks mid-word); pipes and CI
    # logs get one line per message at a fixed width instead of rich's 80-column default.
    tty = stream.isatty()
    return Console(stderr=stderr, highlight=False, soft_wrap=not tty, width=None if tty else 120)


def _output_path_problem(
    path: Path | None, flag: str = "--report", example: str = "report.html"
) -> str | None:
    """Why an output file cannot be written, checked before anyone sits still for a capture (or waits an
    hour for an evaluation)."""
    if path is None:
        return None
    if path.is_dir():
        return f"{flag} {path}: is a directory; give a file name such as {path / example}"
    if not path.parent.is_dir():
        return f"{flag} {path}: the directory {path.parent} does not exist (create it first)"
    if not os.access(path.parent, os.W_OK):
        return f"{flag} {path}: the directory {path.parent} is not writable"
    return None


def cmd_measure(args: argparse.Namespace) -> int:
    from vitalcam.session import MeasureOptions

    demographics = {
        k: getattr(args, k) for k in ("age", "sex", "fitzpatrick") if getattr(args, k) is not None
    }
    if args.age is not None and not MIN_AGE_YEARS <= args.age <= MAX_AGE_YEARS:
        print(f"vitalcam measure: --age must be {MIN_AGE_YEARS}..{MAX_AGE_YEARS}", file=sys.stderr)
        return EXIT_USAGE
    if args.api_url and not args.api_key:
        print("vitalcam measure: --api-url needs --api-key (or VITALCAM_API_KEY)", file=sys.stderr)
        return EXIT_USAGE
    problem = _output_path_problem(args.report)
    if problem:
        print(f"vitalcam measure: {problem}", file=sys.stderr)
        return EXIT_USAGE
    replay = args.video is not None
    options = MeasureOptions(
        source=args.video if replay else args.camera,
        replay=replay,
        duration_s=args.duration if args.duration is not None else (MAX_DURATION_S if replay else 30.0),
        demographics=demographics or None,
        api_url=args.api_url,
        api_key=args.api_key,
        payload=args.payload,
        regions=args.regions,
        preview=not args.no_preview and not args.json,
        outbox_dir=args.outbox,
    )
    code, outcome = run_measurement(options, json_output=args.json, report=args.report)
    if outcome is not None and replay and args.duration is not None:
        _say_when_the_video_was_shorter(outcome, args.duration)
    return code


def _say_when_the_video_was_shorter(outcome: Outcome, asked_s: float) -> None:
    """--duration beyond the end of a video measures what there is; the person should not have to guess."""
    t_s = outcome.measurement.t_s
    frame_s = float(t_s[-1] - t_s[0]) / max(len(t_s) - 1, 1)
    length_s = float(t_s[-1] - t_s[0]) + frame_s
    if asked_s > length_s + 2 * frame_s:
        print(
            f"Note: the video is {length_s:.1f} s long; measured all of it instead of the {asked_s:g} s asked for.",
            file=sys.stderr,
        )


# What to try next, per failure: a person who has no camera needs a way forward, not only a diagnosis.
NO_CAMERA_NEXT = (
    "Next: `vitalcam cameras` lists the cameras OpenCV can open; `vitalcam measure --video FILE` measures "
    "a recording; `vitalcam demo` measures a generated face video (no camera needed)."
)


def run_measurement(
    options: MeasureOptions, *, json_output: bool = False, report: Path | None = None
) -> tuple[int, Outcome | None]:
    """Run one measurement with terminal output; maps every failure to its documented exit code.

    Progress and errors go to stderr, the result to stdout (or, with `json_output`, only the JSON).
    """
    from capture import CameraNotFound, CaptureError
    from contract.tensor import TensorFormatError
    from preprocess import QualityTooLow
    from transport import VitalcamError
    from vitalcam.console import print_result, progress_printer
    from vitalcam.session import Cancelled, NotReady, measure

    # Checked in order: CameraNotFound is a CaptureError, so it must come first.
    failures: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str, str], ...] = (
        (Cancelled, EXIT_CANCELLED, "cancelled:", ""),
        (CameraNotFound, EXIT_NO_CAMERA, "[red]no camera:[/red]", NO_CAMERA_NEXT),
        ((QualityTooLow, NotReady), EXIT_QUALITY, "[red]not enough usable signal:[/red]", ""),
        (
            (CaptureError, TensorFormatError, FileNotFoundError),
            EXIT_USAGE,
            "[red]cannot read the input:[/red]",
            "",
        ),
        (VitalcamError, EXIT_SERVER, "[red]server or network failure:[/red]", ""),
    )
    errors = _console(stderr=True)
    printer = progress_printer(errors)
    failure: tuple[int, str, str, BaseException] | None = None
    try:
        outcome = measure(options, on_event=printer)
    except Exception as exc:
        matched = next(((c, lab, nxt) for types, c, lab, nxt in failures if isinstance(exc, types)), None)
        if matched is None:
            raise
        failure = (*matched, exc)
    finally:
        printer.close()
    if failure is not None:
        code, label, next_step, error = failure
        if isinstance(error, VitalcamError):  # what to fix (the key, the URL, or nothing), the path once
            errors.print(f"{label} {error.summary}")
            next_step = _server_next_step(error, options.api_url)
        else:
            errors.print(f"{label} {error}")
        if next_step:
            errors.print(next_step)
        return code, None
    if json_output:
        print(json.dumps(outcome.result.raw, indent=2))
    else:
        print_result(_console(), outcome)
    if report is not None:
        from vitalcam.report import write_report

        write_report(outcome, report)
        errors.print(f"Report written to {report}")
    return EXIT_OK, outcome


def cmd_demo(args: argparse.Namespace) -> int:
    from vitalcam.console import render_progress
    from vitalcam.demo import cache_dir, demo_video
    from vitalcam.session import MeasureOptions

    problem = _output_path_problem(args.report)
    if problem:
        print(f"vitalcam demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    errors = _console(stderr=True)
    errors.print(f"Demo video cache: {cache_dir()}")
    with render_progress(errors, "Rendering the demo video (once; cached afterwards)") as progress:
        path, truth, rendered = demo_video(progress=progress)
    errors.print(("Rendered" if rendered else "Using cached") + f" demo video {path}")
    options = MeasureOptions(source=path, replay=True, duration_s=None, preview=False)
    code, outcome = run_measurement(options, report=args.report)
    if outcome is None:
        return code
    return EXIT_OK if _print_demo_comparison(_console(), outcome, truth) else EXIT_QUALITY


def _print_demo_comparison(console: Console, outcome: Outcome, truth: SyntheticTruth) -> bool:
    """Print measured against true values; True when the heart rate is within 3 bpm of the truth."""
    from rich.table import Table

    vitals = outcome.result.vitals
    if vitals is None or outcome.result.is_fallback:
        return False
    table = Table(title="Demo: measured vs true (injected into the video)")
    for column in ("Vital", "Measured", "True", "Error"):
        table.add_column(column)
    pairs = (
        ("Heart rate (bpm)", vitals.heart_rate, truth.hr_bpm),
        ("Respiratory rate (breaths/min)", vitals.respiratory_rate, truth.rr_bpm),
        ("HRV SDNN (ms)", vitals.hrv, truth.sdnn_ms),
    )
    for label, measured, true in pairs:
        if measured is None:
            table.add_row(label, "-", f"{true:.1f}", "-")
        else:
            table.add_row(label, f"{measured:.1f}", f"{true:.1f}", f"{measured - true:+.1f}")
    console.print(table)
    return vitals.heart_rate is not None and abs(vitals.heart_rate - truth.hr_bpm) <= 3.0


def cmd_serve(args: argparse.Namespace) -> int:
    from server import serve
    from server.runner import UnsafeBindError

    try:
        serve(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            workers=args.workers,
            database_url=args.database_url,
            blob_store=args.blob_store,
            queue_url=args.queue,
        )
    except (UnsafeBindError, ValueError) as exc:
        print(f"vitalcam serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # uvicorn could not start; it has logged why (usually the port is taken)
        if exc.code in (None, 0):
            return EXIT_OK
        print(
            f"vitalcam serve: could not listen on {args.host}:{args.port} (see the error above; a port "
            "in use is the usual cause): stop the other server or choose another --port",
            file=sys.stderr,
        )
        return EXIT_SERVE_FAILED
    return EXIT_OK


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """The scaled configuration's stores (docs/deploy.md); each defaults to its environment variable."""
    parser.add_argument("--database-url", help="PostgreSQL URL (env VITALCAM_DATABASE_URL; default SQLite)")
    parser.add_argument(
        "--blob-store",
        help="s3://bucket?endpoint=URL&region=NAME (env VITALCAM_BLOB_STORE; default a folder)",
    )
    parser.add_argument(
        "--queue",
        help="redis://host:port/db for inference workers (env VITALCAM_QUEUE_URL; default in-process)",
    )


def cmd_worker(args: argparse.Namespace) -> int:
    from server import ServerConfig
    from server.queue import run_worker

    try:
        config = ServerConfig.from_env(
            data_dir=args.data_dir,
            database_url=args.database_url,
            blob_store=args.blob_store,
            queue_url=args.queue,
            single_process=False,
        )
        if not config.queue_url:
            raise ValueError("a worker needs --queue (or VITALCAM_QUEUE_URL)")
    except ValueError as exc:
        print(f"vitalcam worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    run_worker(config, job_timeout_s=args.job_timeout, concurrency=args.concurrency)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from server.stores.base import StoreUnavailable

    try:
        return _keys(args)
    except StoreUnavailable as exc:
        print(f"vitalcam keys: {exc}", file=sys.stderr)
        return EXIT_SERVER


def _keys(args: argparse.Namespace) -> int:
    from server import create_key, default_data_dir, list_keys, revoke_key

    data_dir = args.data_dir or default_data_dir()
    database_url = args.database_url or os.environ.get("VITALCAM_DATABASE_URL") or None
    where = _without_password(database_url) if database_url else str(data_dir)
    if args.keys_command == "create":
        key = create_key(data_dir, args.developer, live=args.live, database_url=database_url)
        print(key)
        print(f"Store this key now: it is shown once and kept only as a hash in {where}.", file=sys.stderr)
    elif args.keys_command == "revoke":
        try:
            revoke_key(data_dir, args.key_id, database_url=database_url)
        except LookupError as exc:  # KeyError's str() quotes its message; show the message itself
            reason = exc.args[0] if exc.args else exc
            print(f"vitalcam keys revoke: {reason}; `vitalcam keys list` shows the key ids", file=sys.stderr)
            return EXIT_USAGE
        print(f"revoked {args.key_id}")
    else:
        keys = list_keys(data_dir, database_url=database_url)
        if not keys:
            print(f"no keys in {where}; create one with `vitalcam keys create --developer NAME`")
        for info in keys:
            print(_describe_key(info))
    return EXIT_OK


def _without_password(url: str) -> str:
    """A database URL fit to print: any password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _describe_key(info: KeyInfo) -> str:
    """One line per key: id, developer, mode, created date and status (never the secret)."""
    from datetime import UTC, datetime

    def day(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")

    status = "active" if info.revoked_at is None else f"revoked {day(info.revoked_at)}"
    mode = "live" if info.live else "test"
    return f"{info.key_id}  {info.developer}  {mode}  created {day(info.created_at)}  {status}"


def _server_advice(error: VitalcamError, api_url: str | None) -> str:
    """What a person can fix after a server failure; "" when it is nobody's setting (the embedded backend,
    a server error that retrying later may cure)."""
    from transport import ApiKeyInvalid, NetworkError, QuotaExceeded, UnexpectedResponse

    if api_url is None:
        return ""
    if isinstance(error, ApiKeyInvalid):
        return f"{api_url} did not accept the API key: check --api-key / VITALCAM_API_KEY."
    if isinstance(error, QuotaExceeded):
        return f"The monthly quota of this API key at {api_url} is used up."
    if isinstance(error, NetworkError) and error.status is None:
        return (
            f"The connection to {api_url} failed: check --api-url / VITALCAM_API_URL and that the server "
            "is running."
        )
    if isinstance(error, UnexpectedResponse):
        return f"{api_url} did not answer like a sessions API: check --api-url / VITALCAM_API_URL."
    return ""


def _server_next_step(error: VitalcamError, api_url: str | None) -> str:
    """The advice, then where the measurement is kept (said once) and how it will reach a server."""
    from transport import ApiKeyInvalid

    lines = [advice] if (advice := _server_advice(error, api_url)) else []
    if error.outbox_path:
        if isinstance(error, ApiKeyInvalid):
            upload = "`vitalcam retry --api-key KEY` uploads it with a valid key"
        else:
            upload = "`vitalcam retry` uploads it" + (f" to {api_url}" if api_url else "") + " later"
        lines.append(f"The measurement is kept at {error.outbox_path}; {upload}.")
    return "\n".join(lines)


def _print_retry(notice: RetryNotice) -> None:
    print(f"  {notice}", file=sys.stderr, flush=True)


def cmd_retry(args: argparse.Namespace) -> int:
    """Upload the outbox: each item to the URL it was saved for (none: the embedded backend), unless
    --api-url sends them all elsewhere; every line says where an item went."""
    import contextlib

    from transport import Outbox, OutboxItem, SessionClient, VitalcamError, retry_outbox
    from vitalcam.session import open_backend

    if args.api_url and not args.api_key:
        print("vitalcam retry: --api-url needs --api-key (or VITALCAM_API_KEY)", file=sys.stderr)
        return EXIT_USAGE
    outbox = Outbox(args.outbox)
    pending = outbox.pending()
    if not pending:
        print(f"outbox {outbox.directory} is empty")
        return EXIT_OK
    destinations: dict[str | None, list[OutboxItem]] = {}
    for item in pending:
        destinations.setdefault(args.api_url or item.api_url, []).append(item)
    failed = 0
    with contextlib.ExitStack() as stack:
        for api_url, items in destinations.items():
            if api_url is not None and not args.api_key:
                failed += len(items)
                for item in items:
                    print(
                        f"{item.payload_path}: not sent: it was saved for {api_url}, whose API key is not "
                        "stored; give it with --api-key (or VITALCAM_API_KEY), or send it elsewhere with --api-url",
                        file=sys.stderr,
                    )
                continue
            backend = open_backend(stack, api_url, args.api_key)
            print(f"sending {len(items)} measurement(s) to {backend.label}", file=sys.stderr, flush=True)
            client = stack.enter_context(SessionClient(backend.url, backend.api_key, on_retry=_print_retry))
            for item, outcome in retry_outbox(client, outbox, items):
                if isinstance(outcome, VitalcamError):
                    failed += 1
                    advice = _server_advice(outcome, api_url)
                    print(
                        f"{item.payload_path}: still pending, {backend.label} answered {outcome.summary}"
                        + (f"\n  {advice}" if advice else ""),
                        file=sys.stderr,
                    )
                else:
                    hr = outcome.vitals.heart_rate if outcome.vitals else None
                    print(
                        f"{item.payload_path}: completed by {backend.label}, session {outcome.session_id}, "
                        f"heart rate {hr} (result saved in {outbox.results_dir})"
                    )
    return EXIT_SERVER if failed else EXIT_OK


BENCHMARKS = ("capture", "preprocess", "peers", "inference", "accuracy", "server")


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks").is_dir():
        print("vitalcam bench: benchmarks/ is only in a source checkout of vitalcam", file=sys.stderr)
        return EXIT_USAGE
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"vitalcam bench: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    status = EXIT_OK
    for name in names:
        print(f"== benchmark: {name} ==", flush=True)
        done = subprocess.run([sys.executable, "-m", f"benchmarks.bench_{name}"], cwd=root, check=False)
        status = status or (EXIT_INTERNAL if done.returncode else EXIT_OK)
    return status


def cmd_cameras(args: argparse.Namespace) -> int:
    from capture import list_cameras

    cameras = list_cameras()
    if not cameras:
        print(
            "no cameras found (OpenCV could not open any /dev/video* device or index 0..7). "
            + NO_CAMERA_NEXT.replace("`vitalcam cameras` lists the cameras OpenCV can open; ", ""),
            file=sys.stderr,
        )
        return EXIT_NO_CAMERA
    for camera in cameras:
        print(camera)
    return EXIT_OK


UBFC_CITATION = (
    'UBFC-rPPG: S. Bobbia, R. Macwan, Y. Benezeth, A. Mansouri, J. Dubois, "Unsupervised skin tissue '
    'segmentation for remote photoplethysmography", Pattern Recognition Letters, 2017.'
)
PURE_CITATION = (
    'PURE: R. Stricker, S. Mueller, H.-M. Gross, "Non-contact video-based pulse rate measurement on a '
    'mobile service robot", IEEE RO-MAN 2014.'
)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation import DatasetError, detect_layout, evaluate, load
    from evaluation.metrics import parse_windows
    from evaluation.tables import summary_lines, write_csv

    try:
        windows = parse_windows(args.windows)
        layout = args.layout or detect_layout(args.path)
        recordings = load(args.path, layout)
    except (DatasetError, ValueError) as exc:
        print(f"vitalcam evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("vitalcam evaluate: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    for problem in (_output_path_problem(args.csv, "--csv", "eval.csv"), _output_path_problem(args.report)):
        if problem:
            print(f"vitalcam evaluate: {problem}", file=sys.stderr)
            return EXIT_USAGE
    console = _console(stderr=True)
    console.print(f"{len(recordings)} recordings ({layout}) in {args.path}; windows {args.windows}")
    from vitalcam.console import evaluation_progress

    with evaluation_progress(
        console, [r.name for r in recordings], baseline=args.baseline is not None
    ) as progress:
        results = evaluate(
            recordings,
            windows,
            baseline=args.baseline is not None,
            jobs=args.jobs,
            progress=progress.update,
            on_result=progress.finished,
        )
    order = {r.name: i for i, r in enumerate(recordings)}
    results.sort(key=lambda r: order[r.name])
    for result in results:
        if result.failure:
            console.print(f"[red]{result.name}: failed[/red] ({result.failure})")
        else:
            for reading in result.readings:
                if reading.note and reading.window_s is None:
                    console.print(f"[yellow]{result.name}:[/yellow] {reading.method}: {reading.note}")
    readings = [r for result in results for r in result.readings]
    print("\n".join(summary_lines(readings)))
    citation = {"ubfc-rppg": UBFC_CITATION, "pure": PURE_CITATION}.get(layout, "")
    if args.csv is not None:
        write_csv(readings, args.csv)
        console.print(f"Readings written to {args.csv}")
    if args.report is not None:
        from evaluation.report import write

        write(results, args.report, title=f"vitalcam evaluation: {args.path.name}", citation=citation)
        console.print(f"Report written to {args.report}")
    return EXIT_INTERNAL if all(r.failure for r in results) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
