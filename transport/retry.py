"""Retry policy: exponential backoff with jitter, bounded in attempts *and* total time.

The policy only decides; the loop that applies it is written once, in the session workflow
(transport/_flow.py), and both clients sleep where it says. Three decisions depend on the error instance,
not its class: whether it is retryable at all (`VitalcamError.retryable`, or a step's stricter rule such
as "never repeat an upload-complete the server may have processed"), how long to wait (the server's
Retry-After when it sent one, else our jittered exponential backoff), and whether that wait still fits in
the total budget and the enclosing `measure()` deadline. A wait that would cross either is refused, so
`total_s` is never overrun by a sleep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from transport.errors import VitalcamError

ShouldRetry = Callable[[VitalcamError], bool]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request tries before its error reaches the caller.

    The wait before retry n (1-based) is `min(max_s, initial_s * 2**(n-1) + uniform(0, jitter_s))`, or the
    server's Retry-After when present (refused if above `max_retry_after_s`). No wait may end later than
    `total_s` after the first attempt started, nor after the enclosing `measure()` deadline; then the last
    error is raised. Defaults (4 attempts, about
    0.5 / 1 / 2 s plus jitter) ride out a server restart or a flaky Wi-Fi hand-over in well under a minute
    while the person is still looking at the screen. Tests pass tiny values to stay fast.
    """

    attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 8.0
    total_s: float = 60.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if min(self.initial_s, self.max_s, self.total_s, self.jitter_s, self.max_retry_after_s) < 0:
            raise ValueError("retry delays must be >= 0")

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """One attempt only: for callers that run their own retry logic."""
        return cls(attempts=1)

    def backoff_s(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Jittered exponential wait before retry `retry_number` (1-based)."""
        jitter = (rng or random).uniform(0, self.jitter_s) if self.jitter_s else 0.0
        try:
            return float(min(self.max_s, self.initial_s * 2 ** (retry_number - 1) + jitter))
        except OverflowError:
            return self.max_s

    def wait_s(
        self, error: VitalcamError, failures: int, elapsed_s: float, time_left_s: float
    ) -> float | None:
        """Seconds to wait before the next attempt after `failures` failed ones, or None to give up.

        `elapsed_s` is the time since the first attempt started, `time_left_s` what remains of the
        enclosing `measure()` (inf outside one): a retry that would start after either budget is not made.
        """
        if failures >= self.attempts:
            return None
        if error.retry_after_s is not None:
            if error.retry_after_s > self.max_retry_after_s:
                return None
            wait = float(error.retry_after_s)
        else:
            wait = self.backoff_s(failures)
        if elapsed_s + wait > self.total_s or wait >= time_left_s:
            return None
        return wait


def default_should_retry(exc: VitalcamError) -> bool:
    return exc.retryable


__all__ = ["RetryPolicy", "ShouldRetry", "default_should_retry"]
