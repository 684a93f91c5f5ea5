"""The synchronous session client: start → upload → upload-complete (→ poll), with retries and an outbox.

Like httpx itself, the client is split from its transport: pass `transport=` (an `httpx.BaseTransport`,
e.g. `httpx.MockTransport` or one with proxies/certificates) and the client logic stays unchanged.

The workflow itself lives in transport/_base.py as flows of steps; this class only carries the steps out
with blocking I/O. Every request has a whole-request deadline (httpx's own timeouts bound single socket
operations only, so a server trickling one byte a second would hold a request for ever) and every
`measure()` a deadline of its own; answers are read streamed and refused past MAX_RESPONSE_BYTES. See
transport/_deadline.py.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TypeVar, Unpack

import httpx

from transport._base import BaseSessionClient, ClientOptions
from transport._common import BodyReader, Payload, Progress, user_agent
from transport._deadline import enforce_deadlines
from transport._flow import Flow, Send, Sleep, Stepper
from transport.errors import VitalcamError
from transport.models import Demographics, Result, StartedSession
from transport.outbox import Outbox

T = TypeVar("T")


class SessionClient(BaseSessionClient):
    """Talks to any server speaking the sessions API (our reference backend or a hosted one).

    Takes `transport=` (any `httpx.BaseTransport`) and the options of `BaseSessionClient`, which also
    says what each deadline bounds. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s),
            transport=transport,
            headers={"User-Agent": user_agent()},
        )
        enforce_deadlines(self._http)

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the four API steps ---------------------------------------------------------------------------

    def start(self, demographics: Demographics | None = None) -> StartedSession:
        """POST /sdk/session/start. Retried on transient errors: an unused extra session is harmless."""
        return self._run(self._start_flow(demographics))

    def upload(self, session: StartedSession, payload: Payload, progress: Progress | None = None) -> None:
        """PUT the tensor to the session's upload URL, streamed, reporting (bytes sent, total) to `progress`.

        Retried on transient errors (a retry restarts from byte 0). The URL accepts one PUT, so if a retry
        after a lost response gets 403, the session's status decides whether the first PUT landed. A real
        403 raises UploadUrlExpired: start a new session.
        """
        self._run(self._upload_flow(session, payload, progress))

    def complete(self, session: StartedSession | str) -> Result:
        """POST /sdk/session/upload-complete: runs inference and returns the result.

        Retried only while the server surely did not receive it; if the request was sent and the answer
        lost, this raises NetworkError with `maybe_processed=True` (`measure()` then polls instead). An
        answer about any other session than this one is an UnexpectedResponse.
        """
        return self._run(self._complete_flow(session))

    def result(self, session_id: str) -> Result:
        """GET /sdk/session/result/{id} once (with retries): works only on servers with PERSIST_VITALS=true."""
        return self._run(self._result_flow(session_id))

    def wait_result(
        self, session_id: StartedSession | str, poll_interval_s: float = 2.0, timeout_s: float = 120.0
    ) -> Result:
        """Poll the result every `poll_interval_s` until completed or failed.

        Raises SessionExpired when the session expired, ResultTimeout when still processing at `timeout_s`,
        and ResultNotPersisted when the session is known to have existed (a StartedSession was passed, or
        an earlier poll saw it) but is now gone, i.e. the server does not persist results.
        """
        return self._run(self._poll_flow(session_id, poll_interval_s, timeout_s, resend_complete=False))

    def check(self, timeout_s: float = 5.0) -> None:
        """Prove the server is reachable and accepts the API key, before anyone sits still for a capture.

        One authenticated GET of a session id no server hands out, not retried: a good key gets
        SESSION_NOT_FOUND, which costs no session and no quota. Raises the typed error otherwise
        (ApiKeyInvalid, NetworkError, QuotaExceeded, UnexpectedResponse for a URL that is no sessions API).
        """
        self._run(self._check_flow(timeout_s))

    # -- the whole workflow ---------------------------------------------------------------------------

    def measure(
        self,
        payload: Payload,
        demographics: Demographics | None = None,
        *,
        progress: Progress | None = None,
        outbox: Outbox | None = None,
    ) -> Result:
        """Start, upload, complete (falling back to polling) and return the result.

        If the session or its upload URL expires, or the result was lost on a non-persisting server, the
        workflow runs once more with a fresh session. All of it ends within `measure_timeout_s`
        (DeadlineExceeded otherwise). If it cannot finish and an `outbox` is given, the payload is saved
        there (unless the server rejected the payload itself) and the error is re-raised with
        `.outbox_path` set, for a later `retry_outbox()`. Every failure is a VitalcamError.
        """
        try:
            return self._run(self._measure_flow(payload, demographics, progress))
        except VitalcamError as exc:
            self._keep(exc, payload, demographics, outbox)
            raise

    # -- the driver -----------------------------------------------------------------------------------

    def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow's steps with blocking I/O: each answer is sent in, each failure thrown in."""
        stepper = Stepper(flow)
        try:
            while (step := stepper.next()) is not None:
                if isinstance(step, Sleep):
                    self._before_sleep(step)
                    time.sleep(step.seconds)
                    continue
                try:
                    stepper.answer(self._send(step))
                except Exception as exc:  # the flow decides what any failure means
                    stepper.fail(exc)
            return stepper.result()
        finally:
            stepper.close()

    def _send(self, step: Send) -> httpx.Response:
        """One HTTP exchange, its answer read in full but never beyond `max_response_bytes`."""
        content = step.upload.chunks(step.progress) if step.upload is not None else None
        request = self._build_request(self._http, step, content)
        with self._exchanging(step, request):
            response = self._http.send(request, stream=True)
            try:
                reader = BodyReader(response, self.max_response_bytes, step.deadline)
                for chunk in response.iter_bytes():
                    if not reader.add(chunk):
                        break
            finally:
                response.close()
        return reader.finish()


__all__ = ["SessionClient"]
