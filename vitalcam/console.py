"""Terminal output: live phase progress (rich in a terminal, plain lines in pipes and CI) and the result table."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, TypedDict

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from contract.limits import RELIABLE_CONFIDENCE
from contract.vitals import VITALS
from vitalcam.session import Event, Outcome, Phase

if TYPE_CHECKING:
    from transport import Result

# Below RELIABLE_CONFIDENCE a "measured" vital is shown as unreliable rather than as a reading, when the
# server does not say itself (the reference backend sends quality.reliable).
# How each kind of number looks: a measured value never looks like an unreliable or a prior one.
KIND_STYLES = {"measured": "green", "prior": "yellow", "unreliable": "magenta", "fallback": "red"}


class PlainLog:
    """One line per phase change and per 10 % of progress: readable in CI logs and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self._last: tuple[Phase, int] | None = None
        self._last_hints: tuple[str, ...] = ()

    def __call__(self, event: Event) -> None:
        step = int((event.percent or 0) // 10)
        key = (event.phase, step)
        if key != self._last or (event.hints and event.hints != self._last_hints):
            parts = [f"[{event.phase.value}]"]
            if event.percent is not None:
                parts.append(f"{event.percent:5.1f}%")
            if event.bytes_total:
                parts.append(f"{event.bytes_sent or 0}/{event.bytes_total} bytes")
            if event.pulse_bpm:
                parts.append(f"pulse ~{event.pulse_bpm:.0f} bpm (preview)")
            if event.message:
                parts.append(event.message)
            if event.hints:
                parts.append("hints: " + "; ".join(event.hints))
            print(" ".join(parts), file=self.stream, flush=True)
        self._last, self._last_hints = key, event.hints

    def close(self) -> None:
        pass


class RichProgress:
    """Progress bars per phase with live hints, for an interactive terminal."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
        )
        self.tasks: dict[Phase, TaskID] = {}
        self.progress.start()

    def __call__(self, event: Event) -> None:
        if event.phase is Phase.INITIALIZING:
            self.progress.console.print(f"[dim]{event.message}[/dim]")
            return
        if event.phase is Phase.DONE:  # every bar ends full, with nothing left to estimate
            for task in self.tasks.values():
                self.progress.update(task, completed=100)
            if Phase.PROCESSING in self.tasks:
                self.progress.update(self.tasks[Phase.PROCESSING], detail="done")
            return
        if event.phase not in self.tasks:
            for task in self.tasks.values():
                self.progress.update(task, completed=100)
            self.tasks[event.phase] = self.progress.add_task(event.phase.value.title(), total=100, detail="")
        detail = "; ".join(event.hints) or event.message
        if event.pulse_bpm:
            detail = f"pulse ~{event.pulse_bpm:.0f} bpm  {detail}"
        if event.bytes_total:
            detail = f"{event.bytes_sent or 0:,}/{event.bytes_total:,} bytes"
        if event.percent is None and event.phase is Phase.PROCESSING:
            self.progress.update(self.tasks[event.phase], detail=detail)  # no percentage to show yet
            return
        self.progress.update(self.tasks[event.phase], completed=event.percent or 0, detail=detail)

    def close(self) -> None:
        self.progress.stop()


def progress_printer(console: Console) -> PlainLog | RichProgress:
    return RichProgress(console) if console.is_terminal else PlainLog(console.file)


class EvaluationProgress:
    """`vitalcam evaluate`'s display: a bar per recording (which stage it is in) and one overall.

    In a pipe or CI log it prints one line per recording and stage instead.
    """

    STAGE_LABELS: ClassVar[dict[str, str]] = {"vitalcam": "vitalcam", "textbook": "textbook", "done": "done"}

    def __init__(self, console: Console, names: list[str], *, baseline: bool) -> None:
        self.console = console
        self.live = console.is_terminal
        self.stages = 2 if baseline else 1
        self.names = names
        self.done_count = 0
        self._printed: set[tuple[str, str]] = set()
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[stage]}"),
            console=console,
        )
        self.overall: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> EvaluationProgress:
        if self.live:
            self.progress.start()
            self.overall = self.progress.add_task("[bold]all recordings", total=len(self.names), stage="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def update(self, name: str, stage: str, fraction: float) -> None:
        """Called with (recording, stage, fraction of that stage)."""
        if not self.live:
            if (name, stage) not in self._printed:
                self._printed.add((name, stage))
                if stage != "done":
                    print(f"{name}: {stage}", file=self.console.file, flush=True)
            return
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=100.0 * self.stages, stage="")
        index = 0 if stage == "vitalcam" else 1
        completed = 100.0 * self.stages if stage == "done" else 100.0 * (index + fraction)
        self.progress.update(self.tasks[name], completed=completed, stage=self.STAGE_LABELS.get(stage, stage))

    def finished(self, result: Any) -> None:
        """Called once per recording with its result (or failure)."""
        self.done_count += 1
        status = f"failed: {result.failure}" if result.failure else "done"
        if self.live:
            assert self.overall is not None
            self.progress.update(self.overall, completed=self.done_count)
            if result.name in self.tasks:
                self.progress.update(self.tasks[result.name], stage=status)
        else:
            print(
                f"{result.name}: {status} ({self.done_count}/{len(self.names)})",
                file=self.console.file,
                flush=True,
            )


def evaluation_progress(console: Console, names: list[str], *, baseline: bool) -> EvaluationProgress:
    return EvaluationProgress(console, names, baseline=baseline)


@contextlib.contextmanager
def render_progress(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback for long local work (rendering the demo video).

    Nothing is shown until the first call, so a step that turns out to be cached prints no empty bar; a
    terminal gets a bar with the time left, a pipe one line per 10 %.
    """
    bar: Progress | None = None
    task: TaskID | None = None
    last_step = -1

    def progress(done: int, total: int) -> None:
        nonlocal bar, task, last_step
        if not console.is_terminal:
            step = 10 * done // max(total, 1)
            if step != last_step:
                last_step = step
                print(f"{description}: {10 * step} %", file=console.file, flush=True)
            return
        if bar is None:
            bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TimeRemainingColumn(),
                console=console,
            )
            bar.start()
            task = bar.add_task(description, total=total)
        assert task is not None
        bar.update(task, completed=done, total=total)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.stop()


Kind = Literal["measured", "prior", "unreliable", "fallback"]


class VitalRow(TypedDict):
    """One vital as every display shows it: the number, and what kind of number it is."""

    key: str
    label: str
    value: float | None
    unit: str
    confidence: float | None
    kind: str  # the words shown, e.g. "prior (not measured by the camera)"
    kind_code: Kind
    value_text: str
    confidence_text: str


def _numbers(value: object) -> dict[str, float]:
    """A {vital: number} map from the server's `quality` extras; anything else in it is ignored."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): float(v) for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _texts(value: object) -> dict[str, str]:
    return {str(k): v for k, v in value.items() if isinstance(v, str)} if isinstance(value, Mapping) else {}


def _flags(value: object) -> dict[str, bool]:
    return {str(k): v for k, v in value.items() if isinstance(v, bool)} if isinstance(value, Mapping) else {}


def vital_rows(result: Result) -> list[VitalRow]:
    """The result as rows: value, unit, per-vital confidence, and what kind of number it is."""
    quality: Mapping[str, object] = result.quality or {}
    confidences = _numbers(quality.get("confidence"))
    sources = _texts(quality.get("source"))
    reliable = _flags(quality.get("reliable"))
    rows: list[VitalRow] = []
    for key, label, unit in ((v.key, v.label, v.unit) for v in VITALS):
        raw = getattr(result.vitals, key, None) if result.vitals is not None else None
        value = float(raw) if isinstance(raw, int | float) else None
        confidence = confidences.get(key, 0.0 if result.is_fallback else None)
        source = sources.get(key, "measured")
        trusted = reliable.get(key, confidence is None or confidence >= RELIABLE_CONFIDENCE)
        kind: Kind
        if result.is_fallback:
            kind, kind_text = "fallback", "fallback (not a measurement)"
        elif source == "prior":
            kind, kind_text = "prior", "prior (not measured by the camera)"
        elif not trusted:
            kind, kind_text = "unreliable", "UNRELIABLE (signal too weak to trust)"
        else:
            kind, kind_text = "measured", "measured"
        value_text = "-" if value is None else f"{value:g}"
        if kind == "unreliable" and value is not None:
            value_text = f"({value:g}?)"  # a number the eye must not take for a reading
        rows.append(
            VitalRow(
                key=key,
                label=label,
                value=value,
                unit=unit,
                confidence=confidence,
                kind=kind_text,
                kind_code=kind,
                value_text=value_text,
                confidence_text="-" if confidence is None else f"{confidence:.2f}",
            )
        )
    return rows


def quality_warnings(result: Result) -> list[str]:
    """The server's warnings about this measurement (e.g. COMPRESSED_VIDEO), as messages."""
    warnings = (result.quality or {}).get("warnings") or []
    return [str(w.get("message") or w.get("code")) for w in warnings if isinstance(w, dict)]


def privacy_summary(outcome: Outcome) -> str:
    m = outcome.measurement
    parts = [
        f"{m.n_frames} frames x {m.n_regions} skin regions ({', '.join(m.meta.regions)}) of mean RGB",
        "face box per frame",
    ]
    parts.append(
        f"{m.n_frames} face patches of 72x72 px" if m.patches is not None else "no face patches (traces-only)"
    )
    return (
        f"Uploaded {outcome.payload_bytes:,} bytes: "
        + "; ".join(parts)
        + ". No raw video frames left this device."
    )


def print_result(console: Console, outcome: Outcome) -> None:
    result = outcome.result
    table = Table(title=f"vitalcam result (session {result.session_id})")
    for column in ("Vital", "Value", "Unit", "Confidence", "Kind"):
        table.add_column(column, justify="right" if column in ("Value", "Confidence") else "left")
    rows = vital_rows(result)
    for row in rows:
        style = KIND_STYLES[row["kind_code"]]
        value = (
            row["value_text"]
            if row["kind_code"] != "unreliable"
            else f"[{style}]{row['value_text']}[/{style}]"
        )
        table.add_row(
            row["label"], value, row["unit"], row["confidence_text"], f"[{style}]{row['kind']}[/{style}]"
        )
    console.print(table)
    if any(r["key"] == "heart_rate" and r["kind_code"] == "unreliable" for r in rows):
        console.print(
            "[bold magenta]UNRELIABLE:[/bold magenta] the heart rate could not be measured with confidence; "
            "the number in parentheses is the strongest candidate, not a reading."
        )
    for message in (*outcome.notes, *quality_warnings(result)):
        console.print(f"[yellow]Note:[/yellow] {message}")
    vitals = result.vitals
    overall = vitals.confidence if vitals is not None else 0.0
    if result.is_fallback:
        quality = result.quality or {}
        reason = quality.get("reason") or "unknown"
        console.print(
            f"[bold red]NOT A MEASUREMENT:[/bold red] the server returned fallback values (confidence 0.0), "
            f"reason {reason}: {quality.get('message', '')}"
        )
    else:
        console.print(f"Overall confidence {overall:.2f} (the heart-rate confidence).")
    console.print(privacy_summary(outcome))
    if outcome.dropped_frames:
        console.print(
            f"[yellow]{outcome.dropped_frames} frames were dropped because processing fell behind.[/yellow]"
        )
    if result.processing_time_ms is not None:
        console.print(f"Server processing time {result.processing_time_ms:.0f} ms.")
    where = "embedded reference backend" if outcome.embedded else outcome.api_url
    console.print(f"[dim]Backend: {where}[/dim]")
