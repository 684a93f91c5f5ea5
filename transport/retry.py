"""Retry policy: exponential backoff with jitter, bounded in attempts *and* total time, on top of stamina.

stamina (a thin, well-kept layer over tenacity) runs the loop, the sleeping (sync and async) and its retry
instrumentation. We hand it a backoff hook instead of an exception type because three decisions depend on
the error instance, not its class: whether it is retryable at all (`VitalcamError.retryable`, or a step's
stricter rule such as "never repeat an upload-complete the server may have processed"), how long to wait
(the server's Retry-After when it sent one, else our jittered exponential backoff), and whether that wait
still fits in the total budget. stamina's own `timeout` only stops *after* the deadline has passed; we want
a policy whose `total_s` is never overrun by a sleep, so the hook refuses any wait that would cross it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina

from transport._deadline import measure_time_left_s
from transport.errors import VitalcamError

T = TypeVar("T")
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
            return min(self.max_s, self.initial_s * 2 ** (retry_number - 1) + jitter)
        except OverflowError:
            return self.max_s


def default_should_retry(exc: VitalcamError) -> bool:
    return exc.retryable


class _BackoffHook:
    """stamina backoff hook: False = give up now, float = retry after that many seconds."""

    def __init__(self, policy: RetryPolicy, should_retry: ShouldRetry) -> None:
        self.policy = policy
        self.should_retry = should_retry
        self.started = time.monotonic()
        self.failures = 0

    def __call__(self, exc: Exception) -> bool | float:
        self.failures += 1
        if not isinstance(exc, VitalcamError) or not self.should_retry(exc):
            return False
        if self.failures >= self.policy.attempts:
            return False
        if exc.retry_after_s is not None:
            if exc.retry_after_s > self.policy.max_retry_after_s:
                return False
            wait = exc.retry_after_s
        else:
            wait = self.policy.backoff_s(self.failures)
        if time.monotonic() - self.started + wait > self.policy.total_s:
            return False
        if wait >= measure_time_left_s():  # the retry would start after measure() has to be over
            return False
        return float(wait)


def call_with_retry(
    policy: RetryPolicy, fn: Callable[[], T], should_retry: ShouldRetry = default_should_retry
) -> T:
    """Call `fn` until it succeeds or the policy gives up; the last error propagates unchanged."""
    hook = _BackoffHook(policy, should_retry)
    for attempt in stamina.retry_context(on=hook, attempts=policy.attempts, timeout=None):
        with attempt:
            return fn()
    raise AssertionError("unreachable: stamina re-raises the last error")


async def acall_with_retry(
    policy: RetryPolicy, fn: Callable[[], Awaitable[T]], should_retry: ShouldRetry = default_should_retry
) -> T:
    """Async twin of `call_with_retry` (stamina sleeps with the running event loop)."""
    hook = _BackoffHook(policy, should_retry)
    async for attempt in stamina.retry_context(on=hook, attempts=policy.attempts, timeout=None):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: stamina re-raises the last error")


__all__ = ["RetryPolicy", "acall_with_retry", "call_with_retry", "default_should_retry"]
