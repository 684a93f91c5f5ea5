"""Stage timing through one helper, so that every stage is billed the same way and nowhere twice.

The benchmark (and a curious user) reads `StageTimer.seconds` to see where a frame's time goes; the
pipeline's parts each wrap their work in `with timer.stage("name"):` instead of keeping clocks of their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType


class _Stage:
    """A reusable context manager that adds its wall-clock time to one entry of `StageTimer.seconds`."""

    __slots__ = ("_name", "_seconds", "_t0_s")

    def __init__(self, seconds: dict[str, float], name: str) -> None:
        self._seconds = seconds
        self._name = name
        self._t0_s = 0.0

    def __enter__(self) -> None:
        self._t0_s = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._seconds[self._name] += time.perf_counter() - self._t0_s


class StageTimer:
    """Seconds spent per named stage, summed over frames."""

    def __init__(self, stages: Iterable[str]) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(stages, 0.0)
        self._stages = {name: _Stage(self.seconds, name) for name in self.seconds}

    def stage(self, name: str) -> _Stage:
        """`with timer.stage(name):` bills the block to `name` (one of the stages given at construction).

        Stages do not nest: one stage object per name is reused, which keeps the per-frame cost to two
        clock reads.
        """
        return self._stages[name]
