"""The steps of the session workflow, and the retry loop, without I/O.

Every decision of the workflow (which request next, what an answer means, whether to retry, how long
to wait, when to poll, when to give up) is a generator that yields *steps* and receives their outcome,
like httpx's `Auth.auth_flow`. The sync and the async client only carry steps out: `Send` is one HTTP
exchange (the fully read `httpx.Response` is sent back, or the transport's `VitalcamError` is thrown in),
`Sleep` a wait. So the workflow exists once and the two clients cannot drift apart; a test can drive a
flow by hand with no network at all.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from transport._common import Deadline, PayloadSource, Progress
from transport.errors import VitalcamError
from transport.retry import RetryPolicy, ShouldRetry, default_should_retry

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """One HTTP exchange to carry out, over by `deadline`.

    `api` requests carry the API key; the tensor's PUT (`upload`) never does, since its URL may point at
    third-party storage. `read_timeout_s` widens httpx's per-read timeout for upload-complete, which
    answers only after inference.
    """

    method: str
    url: str
    deadline: Deadline
    api: bool = True
    json: Any = None
    upload: PayloadSource | None = None
    progress: Progress | None = None
    read_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """Why and when the next attempt of a step is made, for whoever shows progress to a person."""

    attempt: int  # the attempt about to be made, 2 for the first retry
    attempts: int  # the policy's most attempts
    wait_s: float
    error: VitalcamError

    def __str__(self) -> str:
        return f"retrying ({self.attempt}/{self.attempts}) in {self.wait_s:.1f} s: {short_reason(self.error)}"


def _root_os_error(error: BaseException) -> OSError | None:
    """The innermost OSError with an errno among an error's causes, if any."""
    found: OSError | None = None
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno is not None:
            found = link
        link = link.__cause__ or link.__context__
    return found


def short_reason(error: VitalcamError) -> str:
    """An error in a few words, for a person: "connection refused", "timed out", "HTTP 503 SERVER_ERROR"."""
    if error.status is not None:
        return f"HTTP {error.status} {error.code}"
    cause = error.__cause__
    if isinstance(cause, httpx.TimeoutException):
        return "timed out"
    if (os_error := _root_os_error(error)) is not None:
        # The socket's own words: the sync and async stacks wrap them differently ("[Errno 111] ...",
        # "All connection attempts failed"), the errno is the same.
        text = (
            os.strerror(os_error.errno) if os_error.errno and os_error.errno > 0 else str(os_error.strerror)
        )
    else:
        text = str(cause) if cause is not None and str(cause) else error.message
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip().rstrip(".")
    return text[:1].lower() + text[1:80]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` before the workflow goes on; `notice` is set when the wait precedes a retry."""

    seconds: float
    notice: RetryNotice | None = None


Step = Send | Sleep
# A workflow: yields steps, receives the answer of a Send (None after a Sleep), returns its value.
Flow = Generator[Step, httpx.Response | None, T]
OnRetry = Callable[[RetryNotice], None]


class Stepper(Generic[T]):
    """Walks a flow for a driver: `next()` gives the next step after sending in the last answer (or
    throwing in the last failure), None once the flow returned; `result()` is then its return value."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._reply: httpx.Response | None = None
        self._failure: Exception | None = None
        self._value: Any = None

    def next(self) -> Step | None:
        reply, failure = self._reply, self._failure
        self._reply, self._failure = None, None
        try:
            return self._flow.throw(failure) if failure is not None else self._flow.send(reply)
        except StopIteration as stop:
            self._value = stop.value
            return None

    def result(self) -> T:
        value: T = self._value  # what the flow returned: a Flow[T] returns a T
        return value

    def answer(self, reply: httpx.Response) -> None:
        self._reply = reply

    def fail(self, failure: Exception) -> None:
        self._failure = failure

    def close(self) -> None:
        """End the flow where it stands (the caller was cancelled or interrupted); a no-op once it returned."""
        self._flow.close()


def exchange(step: Send) -> Flow[httpx.Response]:
    """Yield one Send and return its answer (a driver that sends back nothing else is a bug)."""
    response = yield step
    if not isinstance(response, httpx.Response):
        raise TypeError(f"a driver answered {step.method} {step.url} with {type(response).__name__}")
    return response


def time_left_s(ends_at_s: float | None) -> float:
    """Seconds until a monotonic deadline (inf when there is none)."""
    return math.inf if ends_at_s is None else ends_at_s - time.monotonic()


def retrying(
    policy: RetryPolicy,
    attempt: Callable[[], Flow[T]],
    *,
    ends_at_s: float | None = None,
    should_retry: ShouldRetry = default_should_retry,
) -> Flow[T]:
    """Run `attempt()` until it returns or the policy gives up; the last error propagates unchanged."""
    started_s = time.monotonic()
    failures = 0
    while True:
        try:
            return (yield from attempt())
        except VitalcamError as exc:
            failures += 1
            wait_s = (
                policy.wait_s(exc, failures, time.monotonic() - started_s, time_left_s(ends_at_s))
                if should_retry(exc)
                else None
            )
            if wait_s is None:
                raise
            yield Sleep(wait_s, RetryNotice(failures + 1, policy.attempts, wait_s, exc))


__all__ = [
    "Flow",
    "OnRetry",
    "RetryNotice",
    "Send",
    "Sleep",
    "Step",
    "Stepper",
    "exchange",
    "retrying",
    "short_reason",
    "time_left_s",
]
